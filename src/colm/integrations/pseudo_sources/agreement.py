"""How well one labelling of items recovers another: the adjusted Rand index (Hubert and Arabie,
1985). 1 means the same partition (whatever the label names), about 0 what random labels with
the same cluster sizes give on average; it can be negative."""
from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence


def _pairs(count: int) -> float:
    return count * (count - 1) / 2.0


def adjusted_rand_index(labels_a: Sequence[Hashable], labels_b: Sequence[Hashable]) -> float:
    """ARI of two labellings of the same items (any hashable labels)."""
    if len(labels_a) != len(labels_b):
        raise ValueError(
            f"the labellings have {len(labels_a)} and {len(labels_b)} items; they must label the same items")
    n = len(labels_a)
    if n < 2:
        raise ValueError("the adjusted Rand index needs at least 2 items")
    together = sum(_pairs(c) for c in Counter(zip(labels_a, labels_b)).values())
    in_a = sum(_pairs(c) for c in Counter(labels_a).values())
    in_b = sum(_pairs(c) for c in Counter(labels_b).values())
    expected = in_a * in_b / _pairs(n)
    best = (in_a + in_b) / 2.0
    if best == expected:  # both partitions trivial (one cluster, or all singletons) in the same way
        return 1.0
    return (together - expected) / (best - expected)
