"""Greedy facility location, its similarity and cluster weights (docs/method.md, step 7).

Objective, for a similarity matrix ``sim`` ``[n, n]`` and a set ``S`` of columns:

    F(S) = sum_i max(0, max_{j in S} sim[i, j]),        F(empty) = 0.

Convention for negative similarities (e.g. cosine): every row's "current best" starts at 0,
as if a phantom element of similarity 0 to everything were always chosen. Negative
similarities therefore never lower the objective, marginal gains are always >= 0, and
``F`` stays monotone submodular. With the non-negative similarities of the "l1"/"l2"
metrics this is the plain facility-location function. (submodlib uses the same convention,
so objectives compare directly.)

Greedy maximization is (1 - 1/e)-optimal for monotone submodular ``F``. The greedy here
evaluates every candidate's gain at every step as one ``[n, n]`` tensor operation, which for
the pool sizes of CoLM (a few hundred) is faster than a lazy priority queue in Python and runs
unchanged on GPU without host synchronization.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from colm.errors import check_budget
from colm.selection.methods.task import Pick, SourceTask
from colm.selection.passes import all_finite
from colm.selection.similarity import similarity_unchecked

if TYPE_CHECKING:
    from colm.config import CoresetConfig


def _check_sim(sim: Tensor) -> None:
    if not isinstance(sim, Tensor):
        raise ValueError(f"sim must be a torch.Tensor, got {type(sim).__name__}")
    if sim.dim() != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"sim must be a square [n, n] matrix, got shape {tuple(sim.shape)}")
    if not sim.is_floating_point():
        raise ValueError(f"sim must be a floating-point tensor, got dtype {sim.dtype}")
    if not all_finite(sim):
        raise ValueError("sim contains NaN or inf values")


def facility_location(sim: Tensor, budget: int) -> tuple[Tensor, Tensor]:
    """Greedily pick ``budget`` columns of ``sim`` maximizing the facility-location objective.

    Args:
        sim: ``[n, n]`` finite similarity; ``sim[i, j]`` is how well ``j`` represents ``i``.
        budget: number of distinct elements to pick, ``0 <= budget <= n``.

    Returns:
        ``(indices, gains)``: ``indices`` LongTensor ``[budget]`` in pick order (distinct, even
        when rows are duplicated: once everything is covered the remaining picks have gain 0
        and go to the lowest unpicked index); ``gains`` ``[budget]`` the marginal gain of each
        pick, so ``gains.sum()`` is ``F(indices)``. Both on ``sim``'s device.

    Ties between candidates with equal gain go to the lowest index (``torch.max`` over a
    dimension returns the first maximum).

    Raises:
        ValueError: ``sim`` not square/floating/finite, or budget outside ``[0, n]``.
    """
    _check_sim(sim)
    n = sim.shape[0]
    budget = check_budget(budget, 0, n, what="the rows of sim")
    if sim.dtype in (torch.float16, torch.bfloat16):
        sim = sim.float()

    if budget == 0:
        return (
            torch.empty(0, dtype=torch.long, device=sim.device),
            torch.empty(0, dtype=sim.dtype, device=sim.device),
        )
    return greedy_unchecked(sim, budget)


def greedy_unchecked(sim: Tensor, budget: int) -> tuple[Tensor, Tensor]:
    """``facility_location`` without input validation (``1 <= budget <= n``, finite float
    ``sim``), for callers that guarantee it: validation costs a host sync on GPU."""
    # Inference mode drops autograd and version-counter bookkeeping from the ~8 small ops per
    # step (~20% of the loop on CPU); the clones hand back ordinary tensors.
    with torch.inference_mode():
        indices, gains = _greedy_loop(sim, budget)
    return indices.clone(), gains.clone()


def _greedy_loop(sim: Tensor, budget: int) -> tuple[Tensor, Tensor]:
    n = sim.shape[0]
    # Rows of sim_t are columns of sim, so fetching a picked column is a contiguous row read.
    sim_t = sim.T.contiguous()  # [n(candidates), n(rows)]
    best = torch.zeros(n, dtype=sim.dtype, device=sim.device)  # [n]; current max per row
    # -inf on picked candidates: their gain is 0 already, and 0 may tie with unpicked ones.
    taken = torch.zeros(n, dtype=sim.dtype, device=sim.device)  # [n]
    buf = torch.empty_like(sim_t)  # [n, n] scratch, reused every step
    gain = torch.empty(n, dtype=sim.dtype, device=sim.device)  # [n]
    picks: list[Tensor] = []
    pick_gains: list[Tensor] = []
    for _ in range(budget):
        # gain[j] = sum_i max(0, sim[i, j] - best[i])
        torch.sub(sim_t, best, out=buf)  # [n, n]
        buf.clamp_(min=0)
        torch.sum(buf, dim=1, out=gain)  # [n]
        gain.add_(taken)
        # max over a dim returns the first maximal index: ties -> lowest index. The index stays
        # a device tensor (no .item()), so a CUDA run never waits for the host.
        value, j = torch.max(gain, dim=0)
        j = j.view(1)  # [1]
        picks.append(j)
        pick_gains.append(value.view(1))
        taken.index_fill_(0, j, float("-inf"))
        torch.maximum(best, sim_t.index_select(0, j).squeeze(0), out=best)
    return torch.cat(picks), torch.cat(pick_gains)


def facility_objective(sim: Tensor, indices: Tensor) -> Tensor:
    """``F(S) = sum_i max(0, max_{j in S} sim[i, j])`` as a 0-d tensor (0 for an empty set)."""
    if indices.numel() == 0:
        return sim.new_zeros(())
    return sim[:, indices].max(dim=1).values.clamp_min(0).sum()


def cluster_weights(sim: Tensor, indices: Tensor) -> Tensor:
    """Cluster size of each chosen element: how many rows it represents.

    Row ``i`` belongs to the chosen element ``j`` with the largest ``sim[i, j]``; ties go to
    the earliest element of ``indices`` (the earliest pick). A chosen element always belongs to
    itself, so every weight is >= 1 even when features are duplicated. Weights sum to ``n``.

    Args:
        sim: ``[n, n]`` similarity (rows and columns index the same ``n`` elements).
        indices: LongTensor ``[k]`` of distinct chosen elements, ``k >= 1``.

    Returns:
        ``[k]`` float weights (``sim``'s floating dtype) on ``sim``'s device.
    """
    if sim.dim() != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"sim must be a square [n, n] matrix, got shape {tuple(sim.shape)}")
    k = indices.numel()
    if k == 0:
        raise ValueError("indices must name at least one chosen element")
    indices = indices.to(device=sim.device, dtype=torch.long).view(-1)
    owner = torch.argmax(sim.index_select(1, indices), dim=1)  # [n]; first max = earliest pick
    owner[indices] = torch.arange(k, device=sim.device)  # chosen elements represent themselves
    counts = torch.bincount(owner, minlength=k)  # [k]
    dtype = sim.dtype if sim.is_floating_point() else torch.float32
    return counts.to(dtype)


def greedy_batched(sims: Sequence[Tensor], budgets: Sequence[int]) -> list[tuple[Tensor, Tensor]]:
    """Greedy facility location on several independent instances at once.

    The selector runs one instance per large source; stepping them together costs
    ``max(budgets)`` tensor steps instead of ``sum(budgets)``, which is what matters for
    small pools (per-op overhead, kernel launches on GPU). Instances are zero-padded to the
    largest ``m``: a padded row adds exactly 0 to every gain, and a padded candidate starts
    "taken" (-inf). Same rules as ``facility_location`` (current best starts at 0, ties to the
    lowest index); the gains are the same sums in a possibly different order, so on exact
    float near-ties a pick may differ from ``facility_location``'s.

    Args:
        sims: square, finite ``[n_s, n_s]`` similarities on one device, one dtype.
        budgets: ``0 <= budgets[s] <= n_s``.

    Returns:
        ``(indices, gains)`` per instance, as ``facility_location`` returns them.
    """
    if len(sims) == 0:
        return []
    with torch.inference_mode():  # see greedy_unchecked
        results = _batched_loop(sims, budgets)
    return [(idx.clone(), gains.clone()) for idx, gains in results]


def _batched_loop(sims: Sequence[Tensor], budgets: Sequence[int]) -> list[tuple[Tensor, Tensor]]:
    count = len(sims)
    device, dtype = sims[0].device, sims[0].dtype
    sizes = [s.shape[0] for s in sims]
    m, steps = max(sizes), max(budgets)
    sim_t = torch.zeros(count, m, m, dtype=dtype, device=device)  # [S, m(candidates), m(rows)]
    taken = torch.zeros(count, m, dtype=dtype, device=device)  # [S, m]
    for s, (sim, n) in enumerate(zip(sims, sizes)):
        sim_t[s, :n, :n] = sim.T
        taken[s, n:] = float("-inf")
    best = torch.zeros(count, m, dtype=dtype, device=device)  # [S, m(rows)]
    buf = torch.empty_like(sim_t)
    gain = torch.empty(count, m, dtype=dtype, device=device)  # [S, m]
    rows = torch.arange(count, device=device)  # [S]
    picks: list[Tensor] = []
    pick_gains: list[Tensor] = []
    for _ in range(steps):
        torch.sub(sim_t, best.unsqueeze(1), out=buf)  # [S, m, m]
        buf.clamp_(min=0)
        torch.sum(buf, dim=2, out=gain)  # [S, m]
        gain.add_(taken)
        value, j = torch.max(gain, dim=1)  # [S]; first maximum -> lowest index
        picks.append(j)
        pick_gains.append(value)
        taken.scatter_(1, j.unsqueeze(1), float("-inf"))
        # An instance past its budget may pick a padded column (all zeros): best is unchanged,
        # and those picks are cut off below.
        torch.maximum(best, sim_t[rows, j], out=best)  # [S, m]
    all_picks = torch.stack(picks, dim=1)  # [S, steps]
    all_gains = torch.stack(pick_gains, dim=1)  # [S, steps]
    return [(all_picks[s, :b], all_gains[s, :b]) for s, b in enumerate(budgets)]


def facility_similarity(feats: Tensor, metric: str) -> Tensor:
    """Facility location's ``[n_q, n_q]`` similarity of a source's rows ``[n_q, h]``, float64:
    the gains of a greedy step then hardly depend on row order (a permuted pool gives the
    permuted choice), and cosine is shifted into [0, 2] so that, as with l1/l2, every row
    counts in the objective (facility_location ignores negative similarities)."""
    sim = similarity_unchecked(feats, metric).double()
    return sim + 1.0 if metric == "cosine" else sim


def greedy_all(sims: Sequence[Tensor], budgets: Sequence[int]) -> list[tuple[Tensor, Tensor]]:
    """Facility location for every source: batched when padding to the largest source wastes
    at most half the work (sources of similar size, the usual case), else one by one."""
    if not sims:
        return []
    sizes = [sim.shape[0] for sim in sims]
    if len(sims) > 1 and len(sizes) * max(sizes) ** 2 <= 2 * sum(n * n for n in sizes):
        return greedy_batched(sims, budgets)
    return [greedy_unchecked(sim, b) for sim, b in zip(sims, budgets)]


def fill(tasks: Sequence[SourceTask], config: CoresetConfig) -> list[Pick]:
    """Registry fill (``within_source="facility_location"``): every source's medoids, stepped
    together; ``Pick.weights`` are the cluster sizes, the objective is F."""
    sims = []
    for t in tasks:
        assert t.features is not None  # needs_features=True
        sims.append(facility_similarity(t.features, config.similarity))  # [n_q, n_q]
    results = greedy_all(sims, [t.budget for t in tasks])
    return [
        Pick(picks, cluster_weights(sim, picks).float(), gains.sum().double())
        for sim, (picks, gains) in zip(sims, results)
    ]
