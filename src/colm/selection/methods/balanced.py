"""Balanced sampling: every row keeps the inclusion probability ``b / n`` of a uniform draw (no
kind of example is favoured), but the draw is balanced on the leading principal components of
the features (the cube method): the picks' mean matches the pool's in the directions where the
rows differ most."""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from colm.selection.methods.task import Pick, SourceTask, each_source

if TYPE_CHECKING:
    from colm.config import CoresetConfig


def principal_scores(x: Tensor, k: int) -> Tensor:
    """Scores ``[n, k']`` (``k' <= k``, float64, CPU) of the rows of ``x`` ``[n, h]`` on its
    ``k`` leading principal components (fewer when the centered rows have lower rank)."""
    xd = x.detach().double().cpu()
    centered = xd - xd.mean(dim=0, keepdim=True)
    u, sv, _ = torch.linalg.svd(centered, full_matrices=False)  # [n, r], [r]
    keep = int(min(k, int((sv > sv.max() * 1e-9).sum()) if sv.numel() else 0))
    return u[:, :keep] * sv[:keep]  # [n, k']


def balanced_sample(x: Tensor, b: int, generator: torch.Generator, components: int = 4) -> Tensor:
    """``b`` rows of ``x`` ``[n, h]`` with inclusion probability exactly ``b / n`` each, balanced
    on its ``components`` leading principal components.

    The cube method (Deville and Tille, Biometrika 2004): start from the inclusion
    probabilities ``pi = b / n`` and move them, one random step at a time, along directions
    that keep every balancing equation ``sum_i a_ik pi_i = const`` (``a_i = (1, scores_i) / pi_i``)
    until each ``pi_i`` is 0 or 1 (the flight phase). Each step goes one of two ways with the
    probabilities that keep ``E[pi_i]`` unchanged, so every row is drawn with probability
    ``b / n``: unbiased like a uniform draw. When no direction is left, the last balancing
    variable is dropped (the landing phase); the sample size (the first variable) is kept to
    the end, so exactly ``b`` rows are drawn.

    Cost: the flight fixes at least one row per step and each step takes an SVD over the rows
    still free, so a source of ``n`` pool rows costs up to ``n`` SVDs of ``[p, n]``: cheap for
    the few dozen rows a source has in the pools measured, most of a second for 512 on one CPU
    core (docs/benchmarks.md, "Selection speed"). For sources that large the fast cube method
    (Chauvet and Tille 2006: each step on p + 1 free rows only) would be the fix.

    Returns:
        LongTensor ``[b]`` of distinct rows (CPU), ascending.
    """
    n = x.shape[0]
    if not 1 <= b <= n:
        raise ValueError(f"budget must be in [1, {n}], got {b}")
    pi = torch.full((n,), b / n, dtype=torch.float64)
    if b == n:
        return torch.arange(n)
    scores = principal_scores(x, components)  # [n, k]
    # a_i = x_i / pi_i with x_i = (pi_i, scores_i): the size equation first, then the scores
    a = torch.cat([torch.ones(n, 1, dtype=torch.float64), scores / pi[:, None]], dim=1)  # [n, p]
    tol = 1e-9
    while True:
        free = torch.nonzero((pi > tol) & (pi < 1 - tol)).squeeze(1)  # [m]
        if free.numel() == 0:
            break
        u = _null_direction(a[free])  # [m] or None
        while u is None and a.shape[1] > 1:  # landing: drop the last balancing variable
            a = a[:, :-1]
            u = _null_direction(a[free])
        if u is None:  # one fractional unit left by rounding: it cannot be (sum pi is b)
            pi[free] = torch.round(pi[free])
            break
        p_free = pi[free]
        up = torch.where(u > 0, (1 - p_free) / u, torch.where(u < 0, -p_free / u, torch.inf))
        down = torch.where(u > 0, p_free / u, torch.where(u < 0, -(1 - p_free) / u, torch.inf))
        lam1, lam2 = float(up.min()), float(down.min())  # largest steps along +u and -u
        go_up = float(torch.rand((), generator=generator, dtype=torch.float64)) < lam2 / (lam1 + lam2)
        p_free = p_free + lam1 * u if go_up else p_free - lam2 * u
        pi[free] = torch.where(p_free < tol, 0.0, torch.where(p_free > 1 - tol, 1.0, p_free))
    picks = torch.nonzero(pi > 0.5).squeeze(1)
    if picks.numel() != b:  # the size equation guarantees it up to rounding; be loud if not
        raise RuntimeError(f"balanced_sample drew {picks.numel()} rows for budget {b} of {n}")
    return picks


def _null_direction(a: Tensor) -> Tensor | None:
    """A unit vector ``u`` ``[m]`` with ``a.T @ u = 0`` for ``a`` ``[m, p]``, or None when the
    only solution is 0 (m <= rank(a)).

    Any such ``u`` keeps the draw unbiased, but it must not depend on the LAPACK kernel: a basis
    of the null space (what a full SVD returns) is the kernel's choice and differed between two
    CPUs of the same machine kind, changing the picks. Its projector ``I - q q^T`` (``q`` an
    orthonormal basis of ``a``'s columns) is unique, so ``u`` is the projection of the first
    coordinate axis with a part outside ``a``'s columns: the same on every machine up to rounding.
    """
    m = a.shape[0]
    q, sv, _ = torch.linalg.svd(a, full_matrices=False)  # q: [m, min(m, p)]
    rank = int((sv > sv.max() * 1e-10).sum()) if sv.numel() else 0
    if rank >= m:
        return None
    q = q[:, :rank]  # [m, r]
    outside = 1 - (q * q).sum(dim=1)  # [m]: ||(I - q q^T) e_i||^2, summing to m - r >= 1
    i = int(torch.nonzero(outside > 1e-6)[0])
    u = -(q @ q[i])  # [m]: (I - q q^T) e_i
    u[i] += 1
    return u / u.norm()


def fill(tasks: Sequence[SourceTask], config: CoresetConfig) -> list[Pick]:
    """Registry fill (``within_source="balanced"``)."""
    return each_source(tasks, lambda t, features: Pick(balanced_sample(features, t.budget, t.generator)))
