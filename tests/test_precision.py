"""bf16/fp16 asked of a CPU without native half-precision arithmetic warns, naming the cost and
the fix; on a CPU that has it, or on a GPU, nothing is said."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

import colm.integrations.precision as precision


def args(device="cpu", bf16=False, fp16=False):
    return SimpleNamespace(device=SimpleNamespace(type=device), bf16=bf16, fp16=fp16)


def test_bf16_on_a_cpu_without_it_warns(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_fast", lambda dtype: False)
    with pytest.warns(RuntimeWarning, match=r"bf16=True on a CPU without native bf16.*8-15x.*bf16=False"):
        precision.warn_slow_half_precision(args(bf16=True))
    assert "fp16=True" in precision.slow_half_precision(args(fp16=True))


def test_no_warning_for_float32_a_capable_cpu_or_a_gpu(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_fast", lambda dtype: False)
    assert precision.slow_half_precision(args()) is None
    assert precision.slow_half_precision(args("cuda", bf16=True)) is None
    monkeypatch.setattr(precision, "cpu_has_fast", lambda dtype: True)
    assert precision.slow_half_precision(args(bf16=True)) is None


def test_this_machines_cpu_is_probed_without_error():
    assert isinstance(precision.cpu_has_fast("bf16"), bool) and isinstance(precision.cpu_has_fast("fp16"), bool)
