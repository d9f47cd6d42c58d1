"""A warning when half precision is asked of a CPU that has no fast half-precision arithmetic.

TRL's SFTConfig defaults to bf16=True. On a CPU without bf16 instructions (AVX512-BF16 or AMX)
PyTorch emulates bf16 matrix products through float32 conversions, so each step is several times
slower than in float32 (8-15x for a bf16 step measured on this project's AVX2 machine:
benchmarks/bf16_cpu_cost.py), and nothing said so.
fp16 on a CPU has no fast path on any common CPU (AMX-FP16 aside).
"""
from __future__ import annotations

import warnings
from typing import Any

import torch


def cpu_has_fast(dtype: str) -> bool:
    """Whether this CPU multiplies ``dtype`` ("bf16" or "fp16") matrices natively."""
    cpu = getattr(torch, "cpu", None)
    check = {"bf16": ("_is_avx512_bf16_supported", "_is_amx_tile_supported"),
             "fp16": ("_is_amx_fp16_supported",)}[dtype]
    for name in check:
        probe = getattr(cpu, name, None)
        try:
            if probe is not None and probe():
                return True
        except RuntimeError:  # pragma: no cover - a torch build without the probe
            continue
    return False


def slow_half_precision(args: Any) -> str | None:
    """The warning for TrainingArguments that ask for bf16/fp16 training on a CPU without it,
    or None."""
    device = getattr(getattr(args, "device", None), "type", None)
    if device != "cpu":
        return None
    for flag, dtype in (("bf16", "bf16"), ("fp16", "fp16")):
        if getattr(args, flag, False) and not cpu_has_fast(dtype):
            return (
                f"{flag}=True on a CPU without native {dtype} arithmetic (no "
                f"{'AVX512-BF16/AMX' if dtype == 'bf16' else 'AMX-FP16'}): PyTorch emulates it, and "
                f"a training step gets much slower than in float32 (bf16: 8-15x measured on an AVX2 "
                f"CPU, benchmarks/bf16_cpu_cost.py). Pass {flag}=False (TRL's SFTConfig defaults "
                f"to bf16=True) unless you accept that"
            )
    return None


def warn_slow_half_precision(args: Any) -> None:
    message = slow_half_precision(args)
    if message is not None:
        warnings.warn(message, RuntimeWarning, stacklevel=3)
