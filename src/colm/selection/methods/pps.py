"""Probability-proportional-to-size sampling: inclusion probability proportional to the feature
norm, Horvitz-Thompson weights (unbiased for the pool sum, with less variance than uniform picks
when norms vary)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from colm.selection.methods.task import Pick, SourceTask, each_source

if TYPE_CHECKING:
    from colm.config import CoresetConfig


def inclusion_probabilities(size: Tensor, b: int) -> Tensor:
    """First-order inclusion probabilities ``pi [n]`` proportional to ``size`` with sum ``b``.

    ``pi_i = b size_i / sum(size)`` where that stays <= 1; rows that would exceed 1 are taken
    with certainty (``pi = 1``) and the rest re-scaled, repeatedly. Rows of size 0 get a small
    floor (1e-6 of the mean) so that every row can be drawn and the Horvitz-Thompson weights
    stay finite.
    """
    n = size.numel()
    if not 1 <= b <= n:
        raise ValueError(f"budget must be in [1, {n}], got {b}")
    size = size.double().clamp_min(0.0)
    mean = float(size.mean())
    size = size.clamp_min(1e-6 * mean if mean > 0 else 1.0)
    certain = torch.zeros(n, dtype=torch.bool)
    pi = torch.ones(n, dtype=torch.float64)
    while True:
        rest = ~certain
        budget_left = b - int(certain.sum())
        scaled = budget_left * size[rest] / size[rest].sum()
        over = scaled >= 1.0
        if not bool(over.any()):
            pi[rest] = scaled
            return pi
        idx = torch.nonzero(rest).squeeze(1)[over]
        certain[idx] = True
        pi[idx] = 1.0


def pps_sample(size: Tensor, b: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``b`` distinct rows drawn with inclusion probability proportional to ``size`` ``[n]``.

    Systematic sampling over the rows in random order (Madow's method): the inclusion
    probabilities ``pi`` are laid end to end on ``[0, b)`` and the rows under the points
    ``u, u + 1, ..., u + b - 1`` (one uniform ``u`` in ``[0, 1)``) are taken. Each row is taken
    with probability exactly ``pi_i`` and exactly ``b`` rows are taken. The weight ``1 / pi_i``
    makes ``sum_S x_i / pi_i`` an unbiased estimate of ``sum_i x_i`` (Horvitz-Thompson).

    Returns:
        ``(indices, weights)``: LongTensor ``[b]`` ascending and float32 ``[b]`` = ``1 / pi``
        (CPU).
    """
    n = size.numel()
    pi = inclusion_probabilities(size.detach().cpu(), b)  # [n] float64, sums to b
    order = torch.randperm(n, generator=generator)  # random order: no row-order effects
    ends = torch.cumsum(pi[order], dim=0)  # [n]
    ends[-1] = float(b)  # exact end despite rounding
    u = float(torch.rand((), generator=generator, dtype=torch.float64))
    points = u + torch.arange(b, dtype=torch.float64)  # [b]
    slots = torch.searchsorted(ends, points, right=True)  # [b]; distinct because pi <= 1
    picks = order[slots.clamp_max(n - 1)]
    picks, _ = torch.sort(picks)
    if picks.unique().numel() != b:  # pi <= 1 guarantees distinct rows; be loud if not
        raise RuntimeError("pps_sample drew a row twice")
    return picks, (1.0 / pi[picks]).float()


def fill(tasks: Sequence[SourceTask], config: CoresetConfig) -> list[Pick]:
    """Registry fill (``within_source="pps"``): size = the row's feature norm; ``Pick.weights``
    are the Horvitz-Thompson ``1 / pi``."""
    return each_source(tasks, lambda t, features: Pick(
        *pps_sample(torch.linalg.vector_norm(features.double(), dim=1), t.budget, t.generator)))  # [b], [b]
