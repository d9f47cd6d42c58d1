"""Range checks of the numeric training options the Trainer accepts without a word.

`--weight-decay nan` used to train until the gradient norm turned NaN and then blame the
learning rate; `--max-grad-norm -1` silently turned clipping off; `--label-smoothing-factor 2`
trained on a negative target weight; `--num-train-epochs inf` never ended. Every such value is
refused right after parsing, naming the option, the value and the range (an InputError, which
the command line prints as one line).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from colm.errors import InputError

#: (option, attribute, what is expected, test) over TrainingArguments (None values are skipped).
TRAINING_RANGES: tuple[tuple[str, str, str, Callable[[float], bool]], ...] = (
    ("--weight-decay", "weight_decay", "a finite number >= 0", lambda v: 0 <= v < math.inf),
    ("--max-grad-norm", "max_grad_norm", "a finite number >= 0 (0: no clipping)", lambda v: 0 <= v < math.inf),
    ("--adam-beta1", "adam_beta1", "a number in [0, 1)", lambda v: 0 <= v < 1),
    ("--adam-beta2", "adam_beta2", "a number in [0, 1)", lambda v: 0 <= v < 1),
    ("--adam-epsilon", "adam_epsilon", "a finite number > 0", lambda v: 0 < v < math.inf),
    ("--label-smoothing-factor", "label_smoothing_factor", "a number in [0, 1)", lambda v: 0 <= v < 1),
    ("--num-train-epochs", "num_train_epochs", "a finite number > 0", lambda v: 0 < v < math.inf),
    ("--warmup-steps", "warmup_steps", "a finite number >= 0", lambda v: 0 <= v < math.inf),
    ("--neftune-noise-alpha", "neftune_noise_alpha", "a finite number > 0", lambda v: 0 < v < math.inf),
    ("--per-device-eval-batch-size", "per_device_eval_batch_size", "an integer >= 1", lambda v: v >= 1),
    ("--save-steps", "save_steps", "a number > 0 (a fraction: a share of the run)", lambda v: 0 < v < math.inf),
    ("--logging-steps", "logging_steps", "a number > 0 (a fraction: a share of the run)",
     lambda v: 0 < v < math.inf),
)


def check_numeric_options(model_args: Any, targs: Any, data_args: Any = None) -> None:
    """Raise InputError naming the first numeric option outside its range."""
    for option, name in (("--max-examples-per-source", "max_examples_per_source"),
                         ("--max-eval-examples-per-source", "max_eval_examples_per_source")):
        cap = getattr(data_args, name, None)
        if cap is not None and not (isinstance(cap, int) and cap >= 1):  # the loader named neither
            raise InputError(f"{option}: expected an integer >= 1 (or no cap), got {cap}")
    for option, name, expected, ok in TRAINING_RANGES:
        value = getattr(targs, name, None)
        if value is None or isinstance(value, bool):
            continue
        if isinstance(value, (int, float)) and not (not math.isnan(value) and ok(value)):
            raise InputError(f"{option}: expected {expected}, got {value}")
    alpha = getattr(model_args, "lora_alpha", None)
    if isinstance(alpha, float) and not math.isfinite(alpha):
        raise InputError(f"--lora-alpha: expected a finite number > 0, got {alpha}")
