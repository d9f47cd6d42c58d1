"""The fitted pseudo-sources of a run, and their file in every checkpoint after the warm-up.

One int per training row (its cluster, -1 for a row without any supervised token, which is never
selected) and the centroids, as safetensors tensors; the rest (step, seed, sizes) as JSON
metadata. Nothing is unpickled, so a checkpoint from anywhere cannot run code (as
colm.selection.state). The file is written to a temporary name and renamed into place.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from colm.errors import CheckpointError
from colm.tagged_files import load_tagged, save_tagged

FORMAT = "colm-pseudo-sources"
FORMAT_VERSION = 1
#: Name of cluster c as a source label (selections.jsonl, logs, reports).
PREFIX = "cluster_"
#: Cluster id of a row without a supervised token (it never reaches the selector).
UNSUPERVISED = -1


def cluster_name(c: int) -> str:
    return f"{PREFIX}{c}"


@dataclass
class PseudoSourceState:
    """``assignment``: LongTensor ``[n_rows]``, the cluster of every training row (dataset index
    order), ``UNSUPERVISED`` where the row has no supervised token; ``centroids``: float32 ``[k,
    hidden]``; ``fitted_at_step``: the optimizer step (global_step) before which they were
    fitted; ``seed``: the k-means seed; ``info``: numbers reported with them (timings, ARI)."""

    assignment: Tensor
    centroids: Tensor
    fitted_at_step: int
    seed: int
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def names(self) -> list[str]:
        return [cluster_name(c) for c in range(self.k)]

    def sizes(self) -> dict[str, int]:
        """Rows per cluster (the selector's dataset-level source sizes), cluster order."""
        supervised = self.assignment[self.assignment != UNSUPERVISED]
        counts = torch.bincount(supervised, minlength=self.k).tolist()
        return {name: int(n) for name, n in zip(self.names, counts)}

    def labels(self, rows: list[int]) -> list[str]:
        """The source label of each training row in ``rows`` (dataset indices): one gather."""
        clusters = self.assignment[torch.as_tensor(rows, dtype=torch.long)]  # [len(rows)]
        missing = torch.nonzero(clusters == UNSUPERVISED).flatten()
        if missing.numel():
            raise ValueError(
                f"training row {rows[int(missing[0])]} has no supervised token and no pseudo-source; "
                "it should have been left out of the pool"
            )
        names = self.names
        return [names[c] for c in clusters.tolist()]


def save_pseudo_sources(path: str | os.PathLike, state: PseudoSourceState) -> None:
    meta = {
        "fitted_at_step": state.fitted_at_step, "seed": state.seed, "k": state.k,
        "n_rows": int(state.assignment.numel()), "info": state.info,
    }
    tensors = {
        "assignment": state.assignment.to("cpu", torch.int32).contiguous(),  # [n_rows]
        "centroids": state.centroids.detach().to("cpu", torch.float32).contiguous(),  # [k, hidden]
    }
    save_tagged(path, tensors, meta, FORMAT, FORMAT_VERSION)


def load_pseudo_sources(path: str | os.PathLike, n_rows: int) -> PseudoSourceState:
    """The state in ``path``, checked against a training set of ``n_rows`` rows.

    Raises:
        CheckpointError (a ValueError) naming the file: unreadable, foreign, another version,
        inconsistent, or written for a training set of another size.
    """
    meta, tensors = load_tagged(path, FORMAT, FORMAT_VERSION, "pseudo-source file")
    assignment, centroids = tensors.get("assignment"), tensors.get("centroids")
    if assignment is None or centroids is None or assignment.dim() != 1 or centroids.dim() != 2:
        raise CheckpointError(f"{path}: pseudo-source file without a 1-D assignment and 2-D centroids")
    assignment = assignment.long()
    k = centroids.shape[0]
    if assignment.numel() != n_rows:
        raise CheckpointError(
            f"{path}: the pseudo-sources were fitted on {assignment.numel()} training rows, this "
            f"training set has {n_rows}; resume with the same data"
        )
    if bool(((assignment < UNSUPERVISED) | (assignment >= k)).any()):
        raise CheckpointError(f"{path}: cluster ids outside [-1, {k}) in the assignment")
    step, seed = meta.get("fitted_at_step"), meta.get("seed")
    if not isinstance(step, int) or not isinstance(seed, int):
        raise CheckpointError(f"{path}: pseudo-source metadata without an integer step and seed")
    info = meta.get("info") if isinstance(meta.get("info"), dict) else {}
    return PseudoSourceState(assignment, centroids.float(), step, seed, info)
