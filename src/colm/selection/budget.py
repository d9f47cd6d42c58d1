"""Which sources are kept whole, and how the rest of the budget is split (docs/method.md, steps 2 and 6).

Everything here is small host-side integer arithmetic over *sources* (never over examples), so
it is exact and deterministic.
"""
from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from torch import Tensor

from colm.errors import check_budget

SourceKey = Hashable


def small_sources(
    rule: str | Sequence[str], source_sizes: Mapping[SourceKey, int]
) -> frozenset[SourceKey]:
    """The keys of ``source_sizes`` whose pool examples are kept without selection.

    Args:
        rule: ``"below_mean"``: dataset-level size strictly below the mean source size (the
            paper's rule; with equal sizes nothing is small); ``"none"``: no source is small;
            or an explicit list of source names, compared with ``str(key)`` so that integer
            source ids can be listed as strings (e.g. from JSON).
        source_sizes: dataset-level example count of every source.

    Raises:
        ValueError: unknown rule, or a listed name that is not a source.
    """
    if isinstance(rule, str):
        if rule == "none":
            return frozenset()
        if rule == "below_mean":
            if not source_sizes:
                return frozenset()
            # Compare n_q * S < sum(n) in integers: no float rounding at the boundary.
            total, count = sum(source_sizes.values()), len(source_sizes)
            return frozenset(k for k, size in source_sizes.items() if size * count < total)
        raise ValueError(
            f"small-source rule {rule!r} is invalid: expected 'below_mean', 'none' or a list of names"
        )
    by_name = {str(k): k for k in source_sizes}
    wanted = [str(name) for name in rule]
    unknown = sorted(set(wanted) - set(by_name))
    if unknown:
        raise ValueError(
            f"small_sources lists unknown source(s) {unknown}; known sources: {sorted(by_name)}"
        )
    return frozenset(by_name[name] for name in wanted)


def split_budget(budget: int, counts: Sequence[int]) -> list[int]:
    """Split ``budget`` over sources proportionally to their pool counts ``n_q``.

    Each source first gets ``floor(budget * n_q / N)`` (``N = sum(counts)``); the
    ``budget - sum(floors)`` leftover units then go one each to the sources with the largest
    fractional remainder ``(budget * n_q) mod N``, ties to the earlier source (largest-remainder
    apportionment). The result sums exactly to ``budget`` and never exceeds ``n_q``: a source
    whose floor equals ``n_q`` has remainder 0 (``budget * n_q / N <= n_q`` because
    ``budget <= N``), so it is never topped up, and every topped-up source had
    ``floor < budget * n_q / N <= n_q``.

    Raises:
        ValueError: negative counts, or ``budget`` outside ``[0, N]``.
    """
    counts = [int(c) for c in counts]
    if any(c < 0 for c in counts):
        raise ValueError(f"source counts must be >= 0, got {counts}")
    total = sum(counts)
    budget = check_budget(budget, 0, total, what="the examples available")
    if total == 0:
        return [0] * len(counts)
    shares = [budget * c // total for c in counts]
    remainders = [budget * c % total for c in counts]
    leftover = budget - sum(shares)
    # Stable sort on -remainder: equal remainders keep source order.
    order = sorted(range(len(counts)), key=lambda q: -remainders[q])
    for q in order[:leftover]:
        shares[q] += 1
    if any(s > c for s, c in zip(shares, counts)):  # cannot happen (see docstring); be loud if it does
        raise RuntimeError(f"split_budget gave {shares} for counts {counts}")
    return shares


def overflow_keep(budget: int, groups: Sequence[tuple[int, Tensor]]) -> Tensor:
    """Which small-source examples to keep when they alone exceed ``budget``.

    Rule: round-robin over the small sources, rarest dataset-level source first (ties: the
    order of ``groups``), taking each source's examples in pool order: round r takes the r-th
    example of every source that still has one, until ``budget`` examples are taken. Rare
    sources, the reason small sources are kept at all, are thus the last to lose examples.

    Args:
        budget: how many to keep, ``>= 0``.
        groups: per small source present in the pool, ``(dataset_size, positions)`` with
            ``positions`` a 1-D LongTensor of its pool positions in increasing order.

    Returns:
        LongTensor of the kept pool positions, sorted ascending (``min(budget, total)`` of them).
    """
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    if not groups:
        return torch.empty(0, dtype=torch.long)
    rarity = sorted(range(len(groups)), key=lambda g: groups[g][0])  # stable: ties keep order
    positions, keys = [], []
    n_groups = len(groups)
    for rank, g in enumerate(rarity):
        pos = groups[g][1].to(torch.long).cpu().view(-1)
        positions.append(pos)
        # key = round * n_groups + rarity rank orders examples exactly as the round-robin does
        keys.append(torch.arange(pos.numel(), dtype=torch.long) * n_groups + rank)
    positions_t, keys_t = torch.cat(positions), torch.cat(keys)
    order = torch.argsort(keys_t)  # keys are distinct, so the order is unique
    kept = positions_t[order[:budget]]
    return torch.sort(kept).values
