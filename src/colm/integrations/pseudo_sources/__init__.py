"""Pseudo-sources for data without source labels (the paper's treatment of SuperGLUE): cluster
the model's hidden states of the training rows and use the cluster ids as sources.

- ``clustering``: ``kmeans``, seeded k-means++ and Lloyd iterations in torch.
- ``embed``: one row -> its final hidden state averaged over the supervised positions.
- ``dataset_pass``: every training row through the model, shared between ranks.
- ``count``: how many clusters ('auto').
- ``state``: the fitted assignment and its checkpoint file (safetensors + JSON).
- ``agreement``: the adjusted Rand index, how well clusters recover known labels.
- ``run``: ``PseudoSources``, the warm-up, the fit and the labels over a training run.
"""
from __future__ import annotations

from .agreement import adjusted_rand_index
from .clustering import KMeansResult, kmeans
from .count import auto_clusters, resolve_clusters
from .run import STATE_FILE, WARMUP, PseudoSources
from .state import PseudoSourceState, cluster_name, load_pseudo_sources, save_pseudo_sources

__all__ = [
    "KMeansResult", "PseudoSourceState", "PseudoSources", "STATE_FILE", "WARMUP", "adjusted_rand_index",
    "auto_clusters", "cluster_name", "kmeans", "load_pseudo_sources", "resolve_clusters", "save_pseudo_sources",
]
