"""Cluster sampling: facility-location clusters used as strata of a random sample."""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from colm.selection.methods.task import Pick, SourceTask, each_source

if TYPE_CHECKING:
    from colm.config import CoresetConfig

from colm.selection.budget import split_budget
from colm.selection.methods.facility_location import cluster_weights, facility_similarity, greedy_unchecked


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


def fill(tasks: Sequence[SourceTask], config: CoresetConfig) -> list[Pick]:
    """Registry fill (``within_source="cluster_sample"``), on facility location's similarity."""
    return each_source(tasks, lambda t, features: Pick(
        cluster_sample(facility_similarity(features, config.similarity), t.budget, t.generator)))
