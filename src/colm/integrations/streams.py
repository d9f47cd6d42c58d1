"""Training sets read as streams: a `datasets.IterableDataset`, a torch IterableDataset, or any
Python iterable of dict rows that has no len().

A stream cannot be counted before training, so the dataset-level source sizes that decide which
sources are small (kept whole) come from the user (`source_sizes=`). Only their ratios matter
(the small-source rule compares each size with the mean size), so shares of the mixture, as
integers, do as well as counts.

Rows are numbered by their position in the current pass over the stream (0, 1, ...); those are
the ids of `selections.jsonl`. A resumed run reads the stream again from its start and skips
the rows of the steps already trained (Trainer's own skipping of consumed batches), so it
continues exactly only when the stream yields the same rows in the same order again (for a
shuffled `datasets.IterableDataset`: the same seed).
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch.utils.data import IterableDataset, get_worker_info


def is_stream(dataset: Any) -> bool:
    """Whether `dataset` can only be iterated (no len() and indexing)."""
    if isinstance(dataset, IterableDataset):
        return True
    try:
        import datasets

        if isinstance(dataset, datasets.IterableDataset):
            return True
    except ImportError:  # pragma: no cover - datasets is a dependency
        pass
    if hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__"):
        return False
    return hasattr(dataset, "__iter__")


def given_source_sizes(source_sizes: Any) -> dict[str, int]:
    """`source_sizes` as given to the trainer, checked, with string keys (sources are compared
    as strings); None, for a stream, is an error saying how to give them."""
    if source_sizes is None:
        raise ValueError(
            "train_dataset is a stream (it has no len()), so colm cannot count how many examples "
            "each source has, which decides the small sources kept whole; pass "
            "source_sizes={source: number of examples} (only the ratios matter, so mixture shares "
            "as integers work) to the trainer, e.g. {'all': 1} for rows without a 'source' field"
        )
    if not isinstance(source_sizes, dict) or not source_sizes:
        raise ValueError(
            f"source_sizes must be a non-empty dict {{source: number of examples}}, got {source_sizes!r}"
        )
    sizes = {}
    for key, value in source_sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"source_sizes[{key!r}] must be an integer >= 1, got {value!r}")
        sizes[str(key)] = value
    return sizes


class IndexedStream(IterableDataset):
    """Yields the stream's dict rows, each with its position in the current pass under `id_key`.

    Every pass restarts the stream (`iter(stream)`), so an object that can be read only once (a
    generator) fails on its second pass with an error saying so, rather than training an endless
    run of empty epochs."""

    def __init__(self, stream: Any, id_key: str) -> None:
        self.stream = stream
        self.id_key = id_key
        self.passes = 0

    def set_epoch(self, epoch: int) -> None:
        # accelerate forwards the Trainer's epoch here: a shuffled datasets.IterableDataset
        # reshuffles per epoch.
        if hasattr(self.stream, "set_epoch"):
            self.stream.set_epoch(epoch)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        # DataLoader workers each run this loop: each keeps every num_workers-th row, so no row
        # is yielded twice (every worker still reads the whole stream).
        worker = get_worker_info()
        part, parts = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        n = -1
        for n, row in enumerate(self.stream):
            if n % parts != part:
                continue
            if not isinstance(row, dict):
                raise TypeError(
                    f"CoresetTrainer needs dict rows in train_dataset (got {type(row).__name__} at "
                    f"position {n} of the stream)"
                )
            yield {**row, self.id_key: n}
        self.passes += 1
        if n < 0:
            raise ValueError(
                "train_dataset yielded no rows"
                + (" on a second pass: it can be read only once (a generator?); pass an object "
                   "whose iter() starts over, e.g. datasets.IterableDataset.from_generator(fn)"
                   if self.passes > 1 else "")
            )
