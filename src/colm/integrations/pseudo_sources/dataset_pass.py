"""One no-grad pass of the model over every training row: the vectors k-means clusters.

Rows are embedded in chunks of similar length (sorted by token count), so a chunk carries little
padding. With several processes each rank embeds every world-th chunk and the vectors are
gathered, so every rank ends with all of them and the pass costs 1/world of its single-process
time.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from colm import distributed, phases

from .embed import mean_supervised_hidden, supervised_positions

#: Rows read at a time when counting tokens in a `datasets.Dataset` (bounded memory).
_LENGTH_BATCH = 1024


def row_lengths(dataset: Any) -> list[int]:
    """Tokens (``len(input_ids)``) of every row, in dataset order."""
    try:
        import datasets

        if isinstance(dataset, datasets.Dataset) and "input_ids" in dataset.column_names:
            out: list[int] = []
            for batch in dataset.select_columns(["input_ids"]).iter(batch_size=_LENGTH_BATCH):
                out.extend(len(ids) for ids in batch["input_ids"])
            return out
    except ImportError:  # pragma: no cover - datasets is a dependency
        pass
    return [len(_row(dataset, i)["input_ids"]) for i in range(len(dataset))]


def _row(dataset: Any, index: int) -> Mapping[str, Any]:
    row = dataset[index]
    if not isinstance(row, Mapping) or "input_ids" not in row:
        raise TypeError(
            f"pseudo-sources need dict rows with input_ids in train_dataset (got {type(row).__name__} at index {index})"
        )
    return row


def length_sorted_chunks(lengths: Sequence[int], chunk_size: int) -> list[list[int]]:
    """Row indices in chunks of ``chunk_size``, shortest rows first (stable: ties keep dataset order)."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    return [order[i : i + chunk_size] for i in range(0, len(order), chunk_size)]


def embed_dataset(
    model: torch.nn.Module, dataset: Any, collate: Callable[[list[Mapping[str, Any]]], Mapping[str, torch.Tensor]],
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(vectors [n_rows, hidden] float32, supervised [n_rows] bool)`` on the CPU, on every rank.

    ``collate`` turns a list of rows into the model's batch (``input_ids``, ``attention_mask``,
    ``labels``), as the trainer collates its pools. ``supervised[i]`` is False for a row without
    any supervised token (its vector is zeros).
    """
    n = len(dataset)
    world, rank = distributed.world_size(), distributed.rank()
    chunks = length_sorted_chunks(row_lengths(dataset), chunk_size)[rank::world]
    vectors: list[torch.Tensor] = []
    flags: list[torch.Tensor] = []
    indices: list[int] = []
    for chunk in phases.track(chunks, "pseudo-sources: embedding the dataset", unit="chunk"):
        batch = collate([dict(_row(dataset, i)) for i in chunk])
        vectors.append(mean_supervised_hidden(model, batch))  # [c, hidden]
        flags.append(supervised_positions(batch["labels"]).any(dim=1).cpu())  # [c]
        indices.extend(chunk)
    if vectors:
        local = torch.cat(vectors)  # [n_local, hidden]
        local_flags = torch.cat(flags)
    else:  # more ranks than chunks: this rank embeds nothing, but still takes part in the gather
        hidden = model.get_output_embeddings().weight.shape[-1]
        local, local_flags = torch.zeros(0, hidden), torch.zeros(0, dtype=torch.bool)
    local_index = torch.tensor(indices, dtype=torch.long)  # [n_local]
    gathered = distributed.gather_rows(local)  # [n, hidden], rank order
    gathered_flags = distributed.gather_rows(local_flags.to(torch.uint8)).bool()
    gathered_index = distributed.gather_rows(local_index)
    out = torch.zeros(n, gathered.shape[1], dtype=torch.float32)
    out[gathered_index] = gathered.float()
    supervised = torch.zeros(n, dtype=torch.bool)
    supervised[gathered_index] = gathered_flags
    return out, supervised
