"""How a large source's share of the budget is filled from its pool rows.

Every function here answers one question: given the ``n`` pool rows of one large source and its
budget ``b`` (``1 <= b < n``), which ``b`` rows go into the coreset, and with what weights? The
selector runs the one named by ``CoresetConfig.within_source`` on each large source separately
(small sources are kept whole before any of this runs).

- ``random_subset``: ``b`` rows uniformly without replacement, the control every other method
  must beat. The coreset mean is an unbiased estimate of the source's pool mean.
- facility location (``colm.facility``): the paper's medoids. Medoids are typical rows, not a
  sample: they leave out the large-norm rows that dominate a gradient mean.
- ``mean_match``: the ``b`` rows whose plain mean is closest to the pool mean of the features,
  which is what a training step on the coreset (uniform weights) actually needs.
- ``cluster_sample``: facility-location clusters used as strata of a random sample.
- ``pps_sample``: inclusion probability proportional to the feature norm, Horvitz-Thompson
  weights: unbiased for the pool sum with less variance than uniform picks when norms vary.
- ``balanced_sample``: every row keeps the inclusion probability ``b / n`` of a uniform draw
  (so no kind of example is favoured), but the draw is balanced on the leading principal
  components of the features (the cube method): the picks' mean matches the pool's in the
  directions where the rows differ most.

The random ones draw from a ``torch.Generator`` the caller seeds (the selector seeds it from
``(config.seed, step, source)``), so every rank of a distributed run makes the same picks.
"""
from __future__ import annotations

import hashlib

import torch
from torch import Tensor

from colm.budget import split_budget
from colm.facility import cluster_weights, greedy_unchecked


def selection_generator(seed: int, step: int, source: int) -> torch.Generator:
    """A CPU generator seeded from ``(seed, step, source)``, stable across processes."""
    key = f"colm.within_source/{int(seed)}/{int(step)}/{int(source)}".encode()
    value = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") & (2**63 - 1)
    return torch.Generator(device="cpu").manual_seed(value)


def random_subset(n: int, b: int, generator: torch.Generator) -> Tensor:
    """``b`` distinct positions of ``range(n)`` uniformly at random: LongTensor ``[b]`` (CPU)."""
    return torch.randperm(n, generator=generator)[:b]


# ------------------------------------------------------------------------------- mean matching
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


# ------------------------------------------------------------------------- cluster sampling
def cluster_sample(sim: Tensor, b: int, generator: torch.Generator) -> Tensor:
    """Facility-location clusters as strata: ``b`` rows sampled in proportion to cluster size.

    Greedy facility location on ``sim`` ``[n, n]`` picks ``b`` medoids; every row joins the
    medoid most similar to it (``cluster_weights``). Each cluster then gets a share of the ``b``
    slots proportional to its size (largest remainder, never more than its size), and its share
    is drawn uniformly without replacement from its members. This realizes the paper's cluster
    size weights by sampling instead of by loss weights: the medoid itself is not favoured, and
    the coreset mean is a stratified-sampling estimate of the pool mean.

    Returns:
        LongTensor ``[b]`` of distinct rows (CPU), ascending.
    """
    n = sim.shape[0]
    medoids, _ = greedy_unchecked(sim, b)  # [b]
    owner = torch.argmax(sim.index_select(1, medoids), dim=1)  # [n]; earliest pick on ties
    owner[medoids] = torch.arange(b, device=sim.device)
    owner = owner.cpu()
    sizes = cluster_weights(sim, medoids).long().tolist()  # [b], sums to n
    shares = split_budget(b, sizes)
    picks = []
    for cluster, share in enumerate(shares):
        if share == 0:
            continue
        members = torch.nonzero(owner == cluster).squeeze(1)  # [size]
        picks.append(members[torch.randperm(members.numel(), generator=generator)[:share]])
    out = torch.sort(torch.cat(picks)).values
    if out.numel() != b or out.unique().numel() != b:  # split_budget guarantees it; be loud
        raise RuntimeError(f"cluster_sample drew {out.tolist()} for budget {b} of {n}")
    return out


# ---------------------------------------------------------------------------- pps sampling
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


# ------------------------------------------------------------------------ balanced sampling
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
    only solution is 0 (m <= rank(a))."""
    m = a.shape[0]
    _, sv, vh = torch.linalg.svd(a.T, full_matrices=True)  # a.T: [p, m]; vh: [m, m]
    rank = int((sv > sv.max() * 1e-10).sum()) if sv.numel() else 0
    if rank >= m:
        return None
    return vh[rank]  # orthogonal to every row of a.T
