"""Checks of `colm train` settings that the option types cannot express.

Each of these values used to be accepted and then silently trained something else (0 steps
trained one step at learning rate 0; a negative LoRA rank was a full fine-tune). They are
checked right after parsing, before the output folder, the model or the data is touched.
"""
from __future__ import annotations

import math
from typing import Any

from colm.cli.errors import UsageError


def check_train_settings(model_args: Any, data_args: Any, targs: Any) -> None:
    """Raise UsageError naming the first option whose value cannot mean what it says."""
    if targs.max_steps == 0 or targs.max_steps < -1:
        raise UsageError(
            f"--max-steps: must be a positive number of optimizer steps, or -1 to train for "
            f"--num-train-epochs; got {targs.max_steps}"
        )
    if targs.max_steps == -1 and not targs.num_train_epochs > 0:
        raise UsageError(f"--num-train-epochs: must be > 0 with --max-steps -1, got {targs.num_train_epochs}")
    for option, value in (("--per-device-train-batch-size", targs.per_device_train_batch_size),
                          ("--gradient-accumulation-steps", targs.gradient_accumulation_steps)):
        if value < 1:
            raise UsageError(f"{option}: must be >= 1, got {value}")
    if targs.n_gpu > 1:  # several GPUs visible to one process: Trainer would use DataParallel
        raise UsageError(
            f"{targs.n_gpu} GPUs are visible to this one process, and CoLM does not support "
            "DataParallel: launch one process per GPU with `torchrun --nproc_per_node=N "
            "$(which colm) train ...`, or pick one GPU with CUDA_VISIBLE_DEVICES"
        )
    from colm.integrations.launch import launch_problem  # torch: imported only once options parsed

    launch = launch_problem(targs, cli=True)
    if launch is not None:  # e.g. torchrun on a CPU machine without --use-cpu true
        raise UsageError(launch)
    from colm.integrations.sharding import sharding_problem

    if (sharding := sharding_problem(targs)) is not None:  # e.g. `accelerate launch --use_fsdp` (FSDP1)
        raise UsageError(sharding)
    if not math.isfinite(targs.learning_rate) or targs.learning_rate <= 0:
        raise UsageError(f"--learning-rate: must be > 0, got {targs.learning_rate}")
    from colm.training.option_ranges import check_numeric_options

    check_numeric_options(model_args, targs, data_args)
    if model_args.lora_r < 0:
        raise UsageError(
            f"--lora-r: must be >= 1 for a LoRA rank, or 0 to train every parameter (full "
            f"fine-tune); got {model_args.lora_r}"
        )
    if model_args.lora_r > 0:
        if not model_args.lora_alpha > 0:
            raise UsageError(f"--lora-alpha: must be > 0, got {model_args.lora_alpha}")
        if not 0.0 <= model_args.lora_dropout < 1.0:
            raise UsageError(f"--lora-dropout: must be in [0, 1), got {model_args.lora_dropout}")
    if data_args.max_length < 2:
        raise UsageError(f"--max-length: must be >= 2 tokens, got {data_args.max_length}")
    if data_args.use_chat_template and data_args.template is not None:
        raise UsageError(
            "--template: unused with --use-chat-template (prompts are rendered with the tokenizer's "
            "chat template); give one of the two"
        )
    check_report_to(targs.report_to)


def check_report_to(report_to: Any) -> None:
    """--report-to: known integration names, installed, or `all` / `none` alone."""
    from transformers.integrations.integration_utils import (
        INTEGRATION_TO_CALLBACK,
        get_available_reporting_integrations,
    )

    # TrainingArguments has already turned "none" into [] and "all" into the installed ones.
    values = [report_to] if isinstance(report_to, str) else list(report_to or [])
    if {"all", "none"} & set(values):
        raise UsageError(f"--report-to: 'all' and 'none' stand alone, got {' '.join(values)}")
    known = sorted(INTEGRATION_TO_CALLBACK)
    for value in values:
        if value not in INTEGRATION_TO_CALLBACK:
            raise UsageError(
                f"--report-to: unknown integration {value!r}; expected one or more of "
                f"{', '.join(known)}, or all, or none"
            )
    installed = set(get_available_reporting_integrations())
    missing = [v for v in values if v not in installed]
    if missing:
        raise UsageError(
            f"--report-to: {', '.join(missing)} is not installed (pip install it, or leave it out); "
            f"installed: {', '.join(sorted(installed)) or 'none'}"
        )
