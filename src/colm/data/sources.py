"""Counting the examples of each source: one function, one order, for the data layer and the trainer.

The order of the counts matters beyond display: `CoresetSelector` takes the keys of its
`source_sizes` as its *source order*, which breaks ties in the budget split and seeds each
source's random picks (`selection_generator(seed, call, source index)`). So every count colm
makes itself comes from `count_sources`, in one order: **first appearance**, the order in which
the sources first occur in the rows (dataset index 0, 1, ...).

Why first appearance rather than names: reordering the rows already changes every pool the
Trainer's sampler draws, so an order independent of the rows would buy no reproducibility, while
first appearance is what the trainer (and so `colm train`) has always used: the same data selects
the same rows as before. Sizes a user gives (`source_sizes=`) keep the order they are given in.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from colm.columns import SOURCE

#: The one source of rows that carry no `source` (a dataset without the column).
SINGLE_SOURCE = "all"


def count_sources(labels: Iterable[Any]) -> dict[str, int]:
    """Examples per source, keyed by the label as a string, in order of first appearance.

    Labels are compared as strings (`1` and `"1"` are one source), as the selector compares them.
    """
    return dict(Counter(str(label) for label in labels))


def source_labels(dataset: Any) -> list[str]:
    """The `source` of every row of a sized dataset, as strings; `SINGLE_SOURCE` for every row
    when the rows carry none (a `datasets.Dataset` without the column, or dict rows without the key)."""
    names = getattr(dataset, "column_names", None)
    if names is not None:
        if SOURCE not in names:
            return [SINGLE_SOURCE] * len(dataset)
        return [str(s) for s in dataset[SOURCE]]
    return [str(dataset[i].get(SOURCE, SINGLE_SOURCE)) for i in range(len(dataset))]
