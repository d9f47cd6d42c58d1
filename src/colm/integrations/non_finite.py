"""Stop a training run whose loss or gradients stopped being finite numbers.

A diverged run (a learning rate far too high, an overflow in half precision) keeps training on
NaN weights without complaint, saves them as checkpoints and ends "successfully". The Trainer
already reads the gradient norm and the loss to the host when it logs; colm looks at the same
numbers at those points, before every checkpoint save and at the last step, never at other
steps, so the check adds no per-step device-to-host sync; at the end of a run the trainable
weights are checked once. NaN weights stay NaN, so a divergence between two checks
is still caught at the next one, before the checkpoint that would hold it is written: the last
checkpoint on disk is the last good one.
"""
from __future__ import annotations

import math
from typing import Any


class NonFiniteTrainingError(ArithmeticError):
    """The loss or the gradient norm became NaN or infinite; `step` is the optimizer step."""

    def __init__(self, step: int, what: str, value: float) -> None:
        self.step, self.what, self.value = step, what, value
        super().__init__(
            f"training diverged: the {what} is {value} at step {step}; the run was stopped before "
            "saving a checkpoint of non-finite weights (try a lower --learning-rate, or full "
            "precision)"
        )


def _scalar(value: Any) -> float | None:
    if value is None:
        return None
    if hasattr(value, "item"):  # a 0-d tensor: one host sync, only at log or save time
        return float(value.item())
    return float(value)


def check_finite(step: int, loss_sum: Any, grad_norm: Any) -> None:
    """Raise NonFiniteTrainingError when the accumulated loss or the last gradient norm is not
    finite. `loss_sum` is the Trainer's running loss since its last log (its NaN filter, on by
    default, keeps that finite; the gradient norm then tells)."""
    for what, value in (("gradient norm", grad_norm), ("training loss", loss_sum)):
        number = _scalar(value)
        if number is not None and not math.isfinite(number):
            raise NonFiniteTrainingError(step, what, number)


def check_weights(model: Any, step: int) -> None:
    """Raise NonFiniteTrainingError when a trainable weight holds NaN or infinity: once, at the
    end of a run, for a divergence that neither the loss (the Trainer's NaN filter) nor a
    gradient norm (none without clipping) showed."""
    import torch

    for name, param in model.named_parameters():
        if param.requires_grad and not bool(torch.isfinite(param.detach()).all()):
            raise NonFiniteTrainingError(step, f"weight {name}", float("nan"))
