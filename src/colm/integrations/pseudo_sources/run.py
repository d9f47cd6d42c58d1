"""Pseudo-sources over a training run: the warm-up, the fit, the labels, the checkpoint file.

The trainer owns one ``PseudoSources`` when ``CoresetConfig.pseudo_sources`` is set. Until the
fit, every step is a warm-up step: its selector draws a uniform random batch-sized subset of the
pool (one source, ``within_source="random"``: plain training at the memory of the batch, with no
scoring pass). At the first step at or after ``pseudo_source_warmup_steps`` the model embeds
every training row, k-means clusters them, and from then on the cluster ids (``cluster_0`` is the
largest) are the sources of a fresh ``CoresetSelector``: small clusters are kept whole, large ones
get per-cluster budgets, exactly as real sources would.

Determinism: the embedding pass is a no-grad eval-mode forward of the current weights, and
k-means is seeded by ``CoresetConfig.selection_seed``; rank 0 runs k-means and broadcasts the result, so all
ranks hold the same assignment. The assignment is saved in every checkpoint after the fit and
restored on resume (never refitted with other weights).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from colm import distributed
from colm.columns import SOURCE
from colm.config import CoresetConfig
from colm.integrations.streams import is_stream
from colm.selection.budget import small_sources
from colm.selection.selector import CoresetSelector

from .agreement import adjusted_rand_index
from .clustering import kmeans
from .count import resolve_clusters
from .dataset_pass import embed_dataset
from .state import UNSUPERVISED, PseudoSourceState, load_pseudo_sources, save_pseudo_sources

logger = logging.getLogger(__name__)

#: The checkpoint file, present in every checkpoint saved after the fit.
STATE_FILE = "colm_pseudo_sources.safetensors"
#: The one source label of the warm-up steps.
WARMUP = "warmup"


def has_source_column(dataset: Any) -> bool:
    """Whether the rows of a sized dataset carry a ``source`` (a column, or a key of row 0)."""
    names = getattr(dataset, "column_names", None)
    if names is not None:
        return SOURCE in names
    return len(dataset) > 0 and isinstance(dataset[0], Mapping) and SOURCE in dataset[0]


class PseudoSources:
    """The pseudo-sources of one training run: warm-up phase, fit, labels, checkpoint file.

    Args:
        config: the run's ``CoresetConfig`` (``pseudo_sources`` set).
        dataset: the training set; it must have a length (a stream cannot be embedded up front).
        source_sizes: what the user passed to the trainer; must be None (they name real sources).

    A ``source`` column in the rows is not used for selection (a warning says so); it is only
    compared with the clusters (``has_source_column``).
    """

    def __init__(self, config: CoresetConfig, dataset: Any, source_sizes: Mapping[str, int] | None) -> None:
        if config.pseudo_sources is None:
            raise ValueError("PseudoSources needs CoresetConfig.pseudo_sources to be set")
        if source_sizes is not None:
            raise ValueError(
                "source_sizes and CoresetConfig.pseudo_sources exclude each other: source_sizes "
                "names real sources, pseudo_sources replaces them by clusters; pass one of them"
            )
        if is_stream(dataset):
            raise ValueError(
                "CoresetConfig.pseudo_sources needs a train_dataset with len() and indexing: every "
                "row is embedded and clustered once, which a stream cannot offer; give the data's "
                "sources instead (a `source` field and source_sizes=)"
            )
        if config.pseudo_sources != "auto" and len(dataset) < config.pseudo_sources:
            raise ValueError(
                f"CoresetConfig.pseudo_sources = {config.pseudo_sources} clusters, but train_dataset "
                f"has only {len(dataset)} rows; use at most {len(dataset)}"
            )
        self.has_source_column = has_source_column(dataset)
        if self.has_source_column:
            logger.warning(
                "CoresetConfig.pseudo_sources is set: the training rows' `source` column is not used "
                "for selection; clusters of the model's hidden states replace it (it is only "
                "compared with the clusters, as pseudo_sources/ari_vs_source)"
            )
        self.config = config
        self.n_rows = len(dataset)
        self.state: PseudoSourceState | None = None

    # ---- phase ------------------------------------------------------------------------------
    @property
    def warmup_steps(self) -> int:
        return self.config.pseudo_source_warmup_steps

    def warming_up(self, step: int) -> bool:
        """Whether the optimizer step after ``step`` completed steps trains without selection."""
        return self.state is None and step < self.warmup_steps

    def needs_fit(self, step: int) -> bool:
        return self.state is None and step >= self.warmup_steps

    def selector(self) -> CoresetSelector:
        """The selector of the current phase: uniform random subsets of one source while warming
        up, then the clusters as sources."""
        if self.state is None:
            warm = dataclasses.replace(self.config, within_source="random", small_sources="none")
            return CoresetSelector(warm, {WARMUP: 1})
        return CoresetSelector(self.config, self.state.sizes())

    def labels(self, rows: Sequence[Mapping[str, Any]], id_key: str) -> list[str]:
        """The source label of each pool row (rows carry their dataset index under ``id_key``)."""
        if self.state is None:
            return [WARMUP] * len(rows)
        return self.state.labels([int(row[id_key]) for row in rows])

    # ---- the fit ----------------------------------------------------------------------------
    def fit(
        self, model: torch.nn.Module, dataset: Any, collate: Callable, chunk_size: int, step: int,
        pool_size: int, true_sources: Sequence[str] | None = None,
    ) -> PseudoSourceState:
        """Embed every row of ``dataset`` with ``model``, cluster, and keep the result.

        ``true_sources``: the rows' own source labels, when they have any, only to report how well
        the clusters recover them (adjusted Rand index).
        """
        started = time.perf_counter()
        vectors, supervised = embed_dataset(model, dataset, collate, chunk_size)  # [n, h], [n]
        embed_s = time.perf_counter() - started
        rows = torch.nonzero(supervised).flatten()  # [n_supervised]
        k = resolve_clusters(self.config.pseudo_sources, rows.numel(), pool_size)
        started = time.perf_counter()
        result = None
        if distributed.rank() == 0:  # one k-means, broadcast: every rank holds the same clusters
            fitted = kmeans(vectors[rows], k, seed=self.config.effective_seed)
            result = (fitted.assignment, fitted.centroids, fitted.iterations)
        assignment_sup, centroids, iterations = distributed.broadcast_object(result)
        kmeans_s = time.perf_counter() - started
        assignment = torch.full((self.n_rows,), UNSUPERVISED, dtype=torch.long)
        assignment[rows] = assignment_sup
        state = PseudoSourceState(assignment, centroids, fitted_at_step=step, seed=self.config.effective_seed)
        sizes = state.sizes()
        small_set = small_sources(self.config.small_sources, sizes)
        small = [name for name in sizes if name in small_set]
        info: dict[str, Any] = {
            "k": state.k, "requested": self.config.pseudo_sources, "rows": int(rows.numel()),
            "unsupervised_rows": int(self.n_rows - rows.numel()), "embed_s": round(embed_s, 3),
            "kmeans_s": round(kmeans_s, 3), "kmeans_iterations": int(iterations), "sizes": sizes,
            "small": [str(s) for s in small],
        }
        if true_sources is not None:
            kept = rows.tolist()
            info["ari_vs_source"] = adjusted_rand_index(assignment[kept].tolist(), [true_sources[i] for i in kept])
        state.info = info
        self.state = state
        logger.info(
            "pseudo-sources: %d clusters of %d rows before step %d (embedding %.1f s, k-means %.1f s); sizes %s; "
            "kept whole: %s%s", state.k, info["rows"], step + 1, embed_s, kmeans_s, list(sizes.values()),
            ", ".join(info["small"]) or "none",
            f"; ARI vs the source column {info['ari_vs_source']:.3f}" if "ari_vs_source" in info else "",
        )
        return state

    # ---- telemetry --------------------------------------------------------------------------
    def log_entry(self) -> dict[str, float]:
        """Numbers for the Trainer's logs (and so report_to) at the fit."""
        assert self.state is not None
        info = self.state.info
        out = {
            "pseudo_sources/k": float(self.state.k),
            "pseudo_sources/small_clusters": float(len(info.get("small", []))),
            "pseudo_sources/embed_s": float(info.get("embed_s", 0.0)),
            "pseudo_sources/kmeans_s": float(info.get("kmeans_s", 0.0)),
        }
        if "ari_vs_source" in info:
            out["pseudo_sources/ari_vs_source"] = float(info["ari_vs_source"])
        for name, size in self.state.sizes().items():
            out[f"pseudo_sources/size/{name}"] = float(size)
        return out

    def summary(self) -> dict[str, Any]:
        """What a report says about the pseudo-sources (JSON-ready)."""
        out: dict[str, Any] = {"requested": self.config.pseudo_sources, "warmup_steps": self.warmup_steps}
        if self.state is None:
            return {**out, "fitted": False}
        return {**out, "fitted": True, "fitted_at_step": self.state.fitted_at_step, **self.state.info}

    # ---- checkpoints ------------------------------------------------------------------------
    def save(self, checkpoint_dir: str) -> None:
        if self.state is not None:
            save_pseudo_sources(os.path.join(checkpoint_dir, STATE_FILE), self.state)

    def load(self, checkpoint_dir: str, checkpoint_step: int) -> None:
        """Restore the fit from a checkpoint; a checkpoint from before the fit has none, and one
        from after it must (a missing file raises CheckpointError)."""
        from colm.integrations.checkpoints import CheckpointError

        path = os.path.join(checkpoint_dir, STATE_FILE)
        if os.path.isfile(path):
            self.state = load_pseudo_sources(path, self.n_rows)
            if self.state.seed != self.config.effective_seed:
                logger.warning("resuming pseudo-sources fitted with seed %d under seed %d: the checkpoint's are kept",
                               self.state.seed, self.config.effective_seed)
        elif checkpoint_step > self.warmup_steps:
            raise CheckpointError(
                f"checkpoint {checkpoint_dir!r} has no {STATE_FILE}, but with "
                f"pseudo_source_warmup_steps = {self.warmup_steps} its step {checkpoint_step} is past "
                "the fit; it was not written by a run with these pseudo-source settings"
            )
        else:
            self.state = None
