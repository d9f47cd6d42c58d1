"""Seeded k-means (k-means++ initialisation, then Lloyd iterations) in plain torch.

Deterministic: every random choice comes from a CPU ``torch.Generator`` seeded by the caller, ties
go to the lowest index, and the cluster numbering is canonical (largest cluster first), so the
same points and seed give the same assignment on any run. Distances are computed in float64 so
that rounding does not flip a point between two near-equidistant centroids from one run or
thread count to the next.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

#: Lloyd iterations at most; iterations stop earlier once no point changes cluster.
MAX_ITERATIONS = 100


@dataclass
class KMeansResult:
    """``assignment``: LongTensor ``[n]`` in ``[0, k)``; ``centroids``: float32 ``[k, d]``, the mean
    of each cluster's points; ``sizes``: points per cluster, non-increasing (cluster 0 is the
    largest); ``iterations``: Lloyd iterations run; ``inertia``: sum of squared distances to the
    assigned centroid."""

    assignment: Tensor
    centroids: Tensor
    sizes: list[int]
    iterations: int
    inertia: float


def _squared_distances(x: Tensor, x_sq: Tensor, centroids: Tensor) -> Tensor:
    """``[n, k]`` squared Euclidean distances (float64, clamped at 0 against cancellation)."""
    return (x_sq[:, None] - 2.0 * (x @ centroids.T) + (centroids * centroids).sum(dim=1)[None, :]).clamp_min_(0.0)


def kmeans_plus_plus(x: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """``k`` initial centroids ``[k, d]`` (rows of ``x``): the first uniformly at random, each next
    one with probability proportional to its squared distance to the nearest chosen one (Arthur
    and Vassilvitskii, 2007). When every remaining point coincides with a chosen one, the next
    centroid is the lowest-index point not chosen yet."""
    n = x.shape[0]
    chosen = [int(torch.randint(n, (1,), generator=generator))]
    nearest = ((x - x[chosen[0]]) ** 2).sum(dim=1)  # [n] float64
    for _ in range(1, k):
        total = float(nearest.sum())
        if total > 0:
            nxt = int(torch.multinomial(nearest / total, 1, generator=generator))
        else:
            taken = torch.zeros(n, dtype=torch.bool)
            taken[chosen] = True
            nxt = int(torch.nonzero(~taken)[0])
        chosen.append(nxt)
        nearest = torch.minimum(nearest, ((x - x[nxt]) ** 2).sum(dim=1))
    return x[chosen].clone()


def kmeans(points: Tensor, k: int, seed: int, max_iterations: int = MAX_ITERATIONS) -> KMeansResult:
    """Cluster the rows of ``points`` ``[n, d]`` into ``k`` clusters.

    An empty cluster (possible after a Lloyd update) is moved onto the point farthest from its own
    centroid, which then forms a cluster of its own; every cluster of the result has a point as
    long as ``points`` has at least ``k`` distinct rows. Runs on the CPU.
    """
    if points.dim() != 2 or points.shape[0] == 0:
        raise ValueError(f"points must be a non-empty [n, d] tensor, got shape {tuple(points.shape)}")
    n = points.shape[0]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"k must be an integer in [1, {n}] (the number of points), got {k!r}")
    x = points.detach().to("cpu", torch.float64)  # [n, d]
    if not torch.isfinite(x).all():
        raise ValueError("points must be finite")
    x_sq = (x * x).sum(dim=1)  # [n]
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    centroids = kmeans_plus_plus(x, k, generator)  # [k, d]
    assignment = torch.full((n,), -1, dtype=torch.long)
    iterations = 0
    for iterations in range(1, max_iterations + 1):  # noqa: B007 (read after the loop)
        dist = _squared_distances(x, x_sq, centroids)  # [n, k]
        new = dist.argmin(dim=1)  # [n], lowest centroid index on ties
        new = _fill_empty(new, dist, k)
        changed = bool((new != assignment).any())
        assignment = new
        centroids = _means(x, assignment, k)
        if not changed:
            break
    dist = _squared_distances(x, x_sq, centroids)
    inertia = float(dist.gather(1, assignment[:, None]).sum())
    return _canonical(assignment, centroids, k, iterations, inertia)


def _means(x: Tensor, assignment: Tensor, k: int) -> Tensor:
    """``[k, d]`` mean of each cluster's points (float64; every cluster has one)."""
    sums = torch.zeros(k, x.shape[1], dtype=x.dtype).index_add_(0, assignment, x)
    counts = torch.bincount(assignment, minlength=k).to(x.dtype)  # [k]
    return sums / counts[:, None]


def _fill_empty(assignment: Tensor, dist: Tensor, k: int) -> Tensor:
    """Give every empty cluster the point farthest from its centroid (deterministic, one point
    per empty cluster, never taking the last point of another cluster)."""
    counts = torch.bincount(assignment, minlength=k)  # [k]
    empty = torch.nonzero(counts == 0).flatten().tolist()
    if not empty:
        return assignment
    assignment = assignment.clone()
    own = dist.gather(1, assignment[:, None]).squeeze(1).clone()  # [n] distance to own centroid
    for c in empty:
        own_count = counts[assignment]  # [n] size of each point's current cluster
        candidates = own.masked_fill(own_count <= 1, -1.0)
        p = int(candidates.argmax())
        if candidates[p] < 0:  # fewer points than clusters could fill: leave it empty
            break
        counts[assignment[p]] -= 1
        counts[c] += 1
        assignment[p] = c
        own[p] = -1.0  # a moved point stays where it was put
    return assignment


def _canonical(assignment: Tensor, centroids: Tensor, k: int, iterations: int, inertia: float) -> KMeansResult:
    """Renumber clusters by size, largest first (ties: the cluster whose first point comes first),
    and drop clusters left empty."""
    sizes = torch.bincount(assignment, minlength=k)  # [k]
    n = assignment.numel()
    first = torch.full((k,), n, dtype=torch.long).scatter_reduce_(
        0, assignment, torch.arange(n), reduce="amin"
    )  # [k] index of each cluster's first point
    order = sorted((c for c in range(k) if sizes[c] > 0), key=lambda c: (-int(sizes[c]), int(first[c])))
    relabel = torch.full((k,), -1, dtype=torch.long)
    relabel[order] = torch.arange(len(order))
    return KMeansResult(
        assignment=relabel[assignment],
        centroids=centroids[order].to(torch.float32),
        sizes=[int(sizes[c]) for c in order],
        iterations=iterations,
        inertia=inertia,
    )
