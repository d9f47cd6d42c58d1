"""Leave the model exactly as it was found.

Feature extraction runs in eval mode (dropout off, so the per-example losses are deterministic and
the SPSA differences are not swamped by dropout noise). Afterwards, even on an exception, every
module's train/eval flag, every parameter's ``requires_grad`` and ``.grad`` are put back.
Parameters themselves are never written: perturbations go through ``functional_call``.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


@contextlib.contextmanager
def scoring_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode inside the block; mode, ``requires_grad`` and ``.grad`` restored on exit."""
    modes = [(m, m.training) for m in model.modules()]
    params = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training
        for p, requires_grad, grad in params:
            p.requires_grad_(requires_grad)
            p.grad = grad
