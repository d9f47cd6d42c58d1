"""Which causal LM to train and how (full fine-tune or LoRA), as a dataclass: the options of
`colm train`, and what `colm.models.loading.load_model` takes from Python.

No `from __future__ import annotations` here: HfArgumentParser reads the real field types.
"""
from dataclasses import dataclass, field

#: Sizes of the embedded default model (colm.models.default.MODEL_SIZES; not imported: torch).
MODEL_SIZES = ("tiny", "small", "base")


@dataclass
class ModelArguments:
    """Which causal LM to train, and how (full fine-tune or LoRA)."""

    _argument_group_name = "model"  # a --help section (HfArgumentParser convention)

    model: str | None = field(
        default=None,
        metadata={"help": "Hugging Face Hub id or local folder of a causal LM, or a GGUF file (a "
                          ".gguf path or a folder holding one; converted once, then cached). "
                          "Default: colm's embedded Llama (see --model-size), built offline "
                          "with no download."},
    )
    model_size: str = field(
        default="tiny",
        metadata={"choices": list(MODEL_SIZES),
                  "help": "Size of the embedded default model (tiny ~1.2M parameters, small ~3.7M, "
                          "base ~10.4M); ignored with --model."},
    )
    dtype: str | None = field(
        default=None,
        metadata={"choices": ["auto", "float32", "bfloat16", "float16"],
                  "help": "dtype to load --model in; unset: float32."},
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow custom modelling code from the Hub (--model)."}
    )
    lora_r: int = field(
        default=0, metadata={"help": "LoRA rank (>= 1); 0 trains every parameter (full fine-tune)."}
    )
    lora_alpha: float = field(
        default=16.0, metadata={"help": "LoRA scaling alpha (the paper: r=128, alpha=512)."}
    )
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input."})
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={"help": "Module names LoRA adapts (e.g. q_proj v_proj), or all-linear. Default: "
                          "peft's choice for the architecture. CoLM's features read the last "
                          "layer's v_proj, so keep it adapted."},
    )
