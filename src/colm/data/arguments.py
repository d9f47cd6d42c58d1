"""Which data to train and validate on, and how it becomes tokens, as a dataclass: the options
of `colm train`, and what `colm.data.prepare.prepare_data` takes from Python.

No `from __future__ import annotations` here: HfArgumentParser reads the real field types.
"""
from dataclasses import dataclass, field


@dataclass
class DataArguments:
    """Which data to train and validate on, and how it becomes tokens."""

    _argument_group_name = "data"

    data: str | None = field(
        default=None,
        metadata={"help": "Training data: a JSON Lines, JSON, Parquet or CSV file (compressed or not), a "
                          "folder of train/validation files or of <source>.<split> files, a save_to_disk "
                          "folder or a Hub dataset id. Default: the 14-source math mixture shipped with colm."},
    )
    train_split: str = field(
        default="train", metadata={"help": "Split of --data to train on (folders and datasets)."}
    )
    eval_data: str | None = field(
        default=None,
        metadata={"help": "Validation data (same formats as --data); wins over --data's own "
                          "validation split. Default: --data's --eval-split split when it has one "
                          "(folder files, a save_to_disk split or a Hub dataset's split), else none."},
    )
    eval_split: str = field(
        default="validation", metadata={"help": "Split used for validation (the default also takes "
                                                "val, dev and eval)."}
    )
    source_field: str = field(
        default="source",
        metadata={"help": "Field naming each example's source. Rows without `source` belong to their "
                          "file's source (the folder's for train.jsonl); another name given here must "
                          "be in every row."},
    )
    prompt_field: str = field(default="prompt", metadata={"help": "Field of the prompt."})
    response_field: str = field(default="response", metadata={"help": "Field of the response."})
    messages_field: str = field(
        default="messages", metadata={"help": "Field of chat examples ({role, content} list)."}
    )
    sources: list[str] | None = field(
        default=None, metadata={"help": "Train and validate on these sources only."}
    )
    max_length: int = field(
        default=256, metadata={"help": "Tokens per example; longer ones are truncated."}
    )
    template: str | None = field(
        default=None,
        metadata={"help": "Prompt template containing {prompt}. Default: "
                          "'Question: {prompt}\\nAnswer:\\n'."},
    )
    use_chat_template: bool = field(
        default=False,
        metadata={"help": "Render prompt/response rows as a user turn and an assistant turn with "
                          "the tokenizer's own chat template (for instruct models) instead of "
                          "--template. Default false: the --template text format. Chat "
                          "(--messages-field) rows always use the chat template."},
    )
    max_examples_per_source: int | None = field(
        default=None, metadata={"help": "Keep at most this many training examples per source."}
    )
    max_eval_examples_per_source: int | None = field(
        default=None, metadata={"help": "Keep at most this many validation examples per source."}
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Replace a previous run's files in --output-dir instead of refusing."},
    )
    allow_empty_responses: bool = field(
        default=False,
        metadata={"help": "Train even when every training response is empty (the model then only "
                          "learns to end its answer at once); refused without this flag."},
    )
