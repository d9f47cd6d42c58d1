"""The best weighted fit on a chosen set: non-negative least-squares loss weights.

Mean matching (``mean_match``) picks the ``b`` rows whose *plain* mean is closest to the pool
mean. Training may also weight the picked rows' losses; ``nnls_match`` then fits the weights:

    minimize  || sum_j w_j x_j - mean_i x_i ||^2   over  w >= 0,  sum_j w_j = 1,

on mean matching's picks. Uniform weights ``1/b`` are feasible, so the fit is never worse than
the plain mean of the same rows. The sum-to-one row makes the weights a weighted *mean*, the
quantity a weighted loss trains once the trainer normalizes the weights (the source keeps its
share of the coreset; only how it is spread over the rows changes). It is imposed as an extra
least-squares row of weight ``lam`` (the standard penalty form of the equality; ``lam`` is 100
times the problem's scale, which leaves the sum within about 1e-4 of one while the fit keeps 12
digits in float64), and the weights are then divided by their sum. The picks are not re-chosen for the weighted
objective: it is the weighted optimum on the uniform optimum's set.

``nnls_gram`` is Lawson and Hanson's active-set algorithm written on the normal equations
(``K = A^T A``, ``c = A^T y``): everything is ``[b, b]``, whatever the feature dimension.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from colm.selection.methods.mean_match import mean_match
from colm.selection.methods.task import Pick, SourceTask, each_source

if TYPE_CHECKING:
    from colm.config import CoresetConfig


def nnls_gram(gram: Tensor, c: Tensor, max_iter: int | None = None) -> Tensor:
    """``argmin_{w >= 0} w^T K w - 2 c^T w`` for a PSD ``K`` ``[b, b]`` and ``c`` ``[b]`` (float64).

    Lawson-Hanson: grow the passive set by the coordinate whose negative gradient ``c - K w``
    is largest, solve the unconstrained problem on it, and step back to the boundary whenever
    that solution leaves the feasible set. Terminates when no coordinate outside the passive
    set can lower the objective (the KKT conditions, to a relative tolerance).
    """
    K, c = gram.double(), c.double()
    b = c.numel()
    w = torch.zeros(b, dtype=torch.float64, device=c.device)
    passive = torch.zeros(b, dtype=torch.bool, device=c.device)
    tol = 1e-12 * (K.diagonal().abs().max() + c.abs().max() + 1e-300)
    for _ in range(3 * b if max_iter is None else max_iter):
        gradient = c - K @ w  # [b]  negative gradient of the objective / 2
        gradient = gradient.masked_fill(passive, -float("inf"))
        j = int(torch.argmax(gradient))
        if not bool(gradient[j] > tol):
            break
        passive[j] = True
        while True:
            idx = torch.nonzero(passive).squeeze(1)
            s = torch.zeros_like(w)
            s[idx] = torch.linalg.pinv(K[idx][:, idx]) @ c[idx]
            if bool((s[idx] > 0).all()):
                w = s
                break
            # Step from w towards s until the first passive coordinate reaches 0.
            leaving = idx[s[idx] <= 0]
            alpha = (w[leaving] / (w[leaving] - s[leaving])).min()
            w = w + alpha * (s - w)
            passive &= w > tol
            w = w.masked_fill(~passive, 0.0)
            if not bool(passive.any()):
                break
    return w


def simplex_weights(x: Tensor, target: Tensor) -> Tensor:
    """Weights ``[b]`` (float64, ``>= 0``, summing to 1) of the rows of ``x`` ``[b, h]`` whose
    weighted sum is closest to ``target`` ``[h]`` (the module docstring's problem)."""
    xd, td = x.double(), target.double()
    gram = xd @ xd.T  # [b, b]
    c = xd @ td  # [b]
    lam = 1e2 * (gram.diagonal().max() + td.square().sum()).sqrt().clamp_min(1e-150)
    # The row sqrt(lam^2) * (1^T w - 1) appended to the least squares: K += lam^2 11^T, c += lam^2.
    w = nnls_gram(gram + lam**2, c + lam**2)
    return w / w.sum() if bool(w.sum() > 0) else torch.full_like(w, 1.0 / w.numel())


def nnls_match(x: Tensor, b: int, max_swaps: int | None = None) -> tuple[Tensor, Tensor]:
    """``b`` rows of ``x`` ``[n, h]`` and their loss weights (module docstring).

    Returns:
        ``(indices, loss_weights)``: LongTensor ``[b]`` (mean matching's picks, in its order)
        and float32 ``[b]`` weights ``>= 0`` with mean 1 (``b`` times the fitted simplex
        weights), on ``x``'s device.
    """
    picks, _ = mean_match(x, b, max_swaps)
    weights = simplex_weights(x.index_select(0, picks), x.double().mean(dim=0))  # [b]
    return picks, (weights * b).float()


def fill(tasks: Sequence[SourceTask], config: CoresetConfig) -> list[Pick]:
    """Registry fill (``within_source="nnls"``): mean matching's picks with fitted loss weights
    (``Pick.weights``, mean 1; the "fitted" weight rule scales them per source)."""
    return each_source(tasks, lambda t, features: Pick(*nnls_match(features, t.budget)))
