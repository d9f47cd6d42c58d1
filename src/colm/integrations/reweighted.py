"""The re-weighting control: plain batches drawn with the stratified coreset's source proportions.

colm's default selection (stratified, `within_source="random"`) keeps the small sources' pool
rows whole and fills the rest of the budget at random within the large sources. Its only effect
on what a step trains is the *source mix*. This sampler reproduces that mix in expectation with
no pool: every training row's source is drawn from `stratified_proportions`, then a row of that
source (each source's rows in a fresh random order, cycled). Nothing is collated beyond the batch,
so it works where a pool cannot be afforded; `CoresetTrainer(train_sampler=...)` takes it.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import torch
from torch.utils.data import Sampler

from colm.selection.budget import small_sources


def stratified_proportions(
    source_sizes: Mapping[str, int], pool_factor: int, small_rule: str | Sequence[str] = "below_mean"
) -> dict[str, float]:
    """The share of a stratified coreset's rows each source has in expectation.

    A pool of `pool_factor` x b rows drawn uniformly holds `pool_factor * b * n_q / N` rows of
    source q in expectation. Small sources (`small_rule`, as the selector applies it) keep them
    all, i.e. a share `pool_factor * n_q / N` of the b; the rest of the budget is split over the
    large sources in proportion to their pool counts, i.e. to `n_q`. When the small sources alone
    would fill the budget, they share it in proportion to `n_q` (the selector then drops some).
    The rounding of one step's split is ignored: these are expectations.
    """
    if pool_factor < 1:
        raise ValueError(f"pool_factor must be >= 1, got {pool_factor}")
    total = sum(source_sizes.values())
    if total <= 0:
        raise ValueError(f"the sources have no rows: {dict(source_sizes)}")
    small = small_sources(small_rule, source_sizes) if pool_factor > 1 else frozenset()
    small_rows = sum(source_sizes[s] for s in small)
    small_share = pool_factor * small_rows / total
    if small_share >= 1 or small_rows == total:
        return {s: (n / small_rows if s in small else 0.0) for s, n in source_sizes.items()} if small_rows \
            else {s: n / total for s, n in source_sizes.items()}
    large_rows = total - small_rows
    return {
        s: (pool_factor * n / total if s in small else (1 - small_share) * n / large_rows)
        for s, n in source_sizes.items()
    }


class SourceReweightedSampler(Sampler[int]):
    """Row indices whose sources follow `proportions`; one pass = len(sources) draws.

    Args:
        sources: the source of every dataset row (row i has source sources[i]).
        proportions: {source: probability}; sources missing from it, or at 0, are never drawn.
        seed: draws of pass e are seeded by (seed, e); `set_epoch` (called by accelerate's
            loaders) sets e, otherwise e counts the passes.
    """

    def __init__(self, sources: Sequence[str], proportions: Mapping[str, float], seed: int = 0) -> None:
        names = sorted(set(map(str, sources)))
        index = {s: q for q, s in enumerate(names)}
        codes = torch.tensor([index[str(s)] for s in sources], dtype=torch.long)  # [N]
        unknown = sorted(set(proportions) - set(names))
        if unknown:
            raise ValueError(f"proportions name sources the data does not have: {unknown}; sources: {names}")
        probs = torch.tensor([float(proportions.get(s, 0.0)) for s in names], dtype=torch.float64)  # [S]
        if bool((probs < 0).any()) or float(probs.sum()) <= 0:
            raise ValueError(f"proportions must be >= 0 with a positive sum, got {dict(proportions)}")
        self.names = names
        self.probs = probs / probs.sum()
        self.rows = [torch.nonzero(codes == q).view(-1) for q in range(len(names))]  # per source: [n_q]
        self.n = len(codes)
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return self.n

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        self.epoch += 1
        drawn = torch.multinomial(self.probs, self.n, replacement=True, generator=gen)  # [N] source codes
        out = torch.empty(self.n, dtype=torch.long)
        for q, rows in enumerate(self.rows):
            where = torch.nonzero(drawn == q).view(-1)
            if where.numel() == 0:
                continue
            # Without replacement within the source, cycling through fresh orders when it runs out.
            laps = -(-where.numel() // rows.numel())
            order = torch.cat([rows[torch.randperm(rows.numel(), generator=gen)] for _ in range(laps)])
            out[where] = order[: where.numel()]
        return iter(out.tolist())
