"""What a comparison's results depend on beyond its command-line settings: the data itself and
every training option that shapes a loss. Recorded in results.jsonl (colm.compare.results), so a
resume with edited data (same row counts) or another optimizer recipe is refused, not averaged in.
"""
from __future__ import annotations

from typing import Any

#: TrainingArguments fields that change what an arm's run computes. Output, logging, saving and
#: device placement are left out: they change where results go, not what they are.
TRAINING_FIELDS = (
    "learning_rate", "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_ratio", "warmup_steps",
    "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm", "optim", "optim_args",
    "bf16", "fp16", "tf32", "label_smoothing_factor", "per_device_train_batch_size",
    "gradient_accumulation_steps", "neftune_noise_alpha", "group_by_length", "dataloader_drop_last",
    "average_tokens_across_devices", "full_determinism",
)


def _digest(table: Any) -> str:
    from colm.data.tokenized_cache import data_digest

    return data_digest(table)[:16]


def compare_identity(train_raw: Any, eval_raw: Any, tokenizer: Any, targs: Any) -> dict[str, Any]:
    """Digests of the training and validation rows (after --sources and the caps) and of the
    tokenizer, the number of processes, and the training options in TRAINING_FIELDS."""
    from colm.data.tokenized_cache import tokenizer_digest

    tok = tokenizer_digest(tokenizer)
    training = {name: getattr(targs, name) for name in TRAINING_FIELDS if hasattr(targs, name)}
    for name, value in training.items():
        if hasattr(value, "value"):  # an enum (lr_scheduler_type, optim): its string
            training[name] = value.value
    return {
        "train_data": _digest(train_raw.data.table),
        "validation_data": _digest(eval_raw.data.table) if eval_raw is not None else None,
        "tokenizer": tok[:16] if tok is not None else type(tokenizer).__name__,
        "world_size": targs.world_size,
        "training": training,
    }
