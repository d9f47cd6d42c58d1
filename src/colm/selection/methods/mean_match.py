"""Mean matching: the ``b`` rows whose plain mean is closest to the pool mean of the features,
which is what a training step on the coreset (uniform weights) actually needs."""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from colm.selection.methods.task import Pick, SourceTask, each_source

if TYPE_CHECKING:
    from colm.config import CoresetConfig


def mean_match(x: Tensor, b: int, max_swaps: int | None = None) -> tuple[Tensor, Tensor]:
    """The ``b`` rows of ``x`` ``[n, h]`` whose mean is (locally) closest to the mean of all rows.

    Minimizes ``E(S) = ||mean_{i in S} x_i - mean_i x_i||^2`` over sets of size ``b``: greedy
    forward selection (each step adds the row that makes the running mean closest to the
    target), then best-improvement swaps (one chosen row out, one other row in) until no swap
    lowers ``E`` or ``max_swaps`` (default ``4 b``) were made. Everything runs on the Gram
    matrix ``K = x x^T``, so a step costs ``O(n)`` and a swap round ``O(b (n - b))`` after the
    ``O(n^2 h)`` Gram. Deterministic; ties go to the lowest index.

    Returns:
        ``(indices, error)``: LongTensor ``[b]`` of distinct rows in pick order, and the final
        ``E(S)`` as a 0-d float64 tensor. On ``x``'s device.
    """
    n = x.shape[0]
    if not 1 <= b <= n:
        raise ValueError(f"budget must be in [1, {n}], got {b}")
    xd = x.double()
    gram = xd @ xd.T  # [n, n]; float64: E(S) is a small difference of large sums
    to_mean = gram.mean(dim=1)  # [n]   <x_i, mu>
    mu_sq = to_mean.mean()  # ||mu||^2
    diag = gram.diagonal()  # [n]
    chosen = torch.zeros(n, dtype=torch.bool, device=x.device)
    # Running quantities of the chosen set S: s[c] = <sum_S x, x_c>, q = ||sum_S x||^2,
    # p = <sum_S x, mu>.
    s = torch.zeros(n, dtype=torch.float64, device=x.device)
    q = torch.zeros((), dtype=torch.float64, device=x.device)
    p = torch.zeros((), dtype=torch.float64, device=x.device)
    order: list[Tensor] = []
    for t in range(b):
        k = t + 1
        # E(S + c) for every candidate c, up to the constant ||mu||^2.
        err = (q + 2.0 * s + diag) / (k * k) - 2.0 * (p + to_mean) / k  # [n]
        err = err.masked_fill(chosen, float("inf"))
        c = torch.argmin(err)  # first minimum: lowest index on ties
        order.append(c.view(1))
        chosen[c] = True
        q = q + 2.0 * s[c] + diag[c]
        p = p + to_mean[c]
        s = s + gram[c]
    picks = torch.cat(order)  # [b]
    if b < n:
        picks, q, p = _improve_by_swaps(gram, to_mean, picks, q, p, 4 * b if max_swaps is None else max_swaps)
    error = (q / (b * b) - 2.0 * p / b + mu_sq).clamp_min(0.0)
    return picks, error


def _improve_by_swaps(
    gram: Tensor, to_mean: Tensor, picks: Tensor, q: Tensor, p: Tensor, max_swaps: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Best-improvement swaps for ``mean_match`` (see there); returns ``(picks, q, p)``."""
    n, b = gram.shape[0], picks.numel()
    picks = picks.clone()
    diag = gram.diagonal()
    for _ in range(max_swaps):
        inside = torch.zeros(n, dtype=torch.bool, device=gram.device)
        inside[picks] = True
        outside = torch.nonzero(~inside).squeeze(1)  # [n - b]
        s = gram[:, picks].sum(dim=1)  # [n]  <sum_S x, x_c>
        # Swapping i (in S) for c (not in S): sum' = sum - x_i + x_c.
        #   ||sum'||^2 = q + K_ii + K_cc - 2 s_i + 2 s_c - 2 K_ic,   <sum', mu> = p - m_i + m_c
        i_part = diag[picks] - 2.0 * s[picks]  # [b]
        c_part = diag[outside] + 2.0 * s[outside]  # [n - b]
        q_new = q + i_part[:, None] + c_part[None, :] - 2.0 * gram[picks][:, outside]  # [b, n - b]
        p_new = p - to_mean[picks][:, None] + to_mean[outside][None, :]  # [b, n - b]
        current = q / (b * b) - 2.0 * p / b
        candidate = q_new / (b * b) - 2.0 * p_new / b
        best = torch.argmin(candidate)  # row-major first minimum
        gain = current - candidate.reshape(-1)[best]
        # A relative tolerance keeps float64 rounding from cycling between equal sets.
        if not bool(gain > 1e-12 * (current.abs() + q / (b * b) + 1e-300)):
            break
        i, c = divmod(int(best), n - b)
        q, p = q_new[i, c], p_new[i, c]
        picks[i] = outside[c]
    return picks, q, p


def fill(tasks: Sequence[SourceTask], config: CoresetConfig) -> list[Pick]:
    """Registry fill (``within_source="mean_match"``); the objective is the squared error."""
    def pick(t: SourceTask, features: Tensor) -> Pick:
        local, error = mean_match(features, t.budget)
        return Pick(local, objective=error)

    return each_source(tasks, pick)
