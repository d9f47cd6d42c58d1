"""The selections of every within-source method on fixed pools are those the code made before
the layout change (recorded on commit d23d75c into tests/data/pinned_selections.json by a script
whose pool construction and configs are copied here unchanged), except `balanced`'s two
entries: re-recorded (three_steps below, 1 and 2 threads alike) when its step direction stopped
depending on the LAPACK kernel's null-space basis, which had made those entries fail on another
CPU of the same machine kind (tests/test_within_source.py checks the direction's invariance).
`nnls` joined later: its two entries were recorded on commit add47ab, before the top-floor
refactor (issue 27), with this file's `three_steps`, and must not change under it.

The `weighted` fix changes no recorded entry: the only weighted entry is facility location's,
whose meaning (medoids train with their cluster sizes) is the documented one. The case the fix
does change, `weighted=True` with a method without cluster weights, was not recorded; it is
tested here against the unweighted entry it must now equal.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from colm.config import CoresetConfig
from colm.selection.selector import CoresetSelector

PINNED = json.loads((Path(__file__).parent / "data" / "pinned_selections.json").read_text())
SIZES = {"big_a": 5000, "big_b": 3000, "big_c": 2000, "tiny": 40}
METHODS = ["random", "facility_location", "mean_match", "cluster_sample", "pps", "balanced", "nnls"]
POOL_COSINE = {"adam_second_moment": "pool", "similarity": "cosine", "topk_dims": 32}


def pool(step: int) -> tuple[torch.Tensor, list[str]]:
    """The recording script's pool of step `step`: 40 rows, d = 96, row norms varying ~15x."""
    g = torch.Generator().manual_seed(1000 + step)
    n, d = 40, 96
    feats = torch.randn(n, d, generator=g) * torch.rand(n, 1, generator=g).mul(3).add(0.2)
    sources = [("big_a", "big_b", "big_c", "tiny")[i % 4] if i % 4 != 3 or i < 8 else "big_a" for i in range(n)]
    return feats, sources


def three_steps(config: CoresetConfig) -> list[dict[str, list]]:
    selector = CoresetSelector(config, SIZES)
    steps = []
    for step in range(3):
        feats, sources = pool(step)
        s = selector.select(feats if config.needs_features else None, sources, budget=16)
        steps.append({"indices": s.indices.tolist(), "weights": [round(w, 5) for w in s.weights.tolist()],
                      "loss_weights": [round(w, 5) for w in s.loss_weights.tolist()]})
    return steps


CASES = [(m, {}) for m in METHODS] + [(f"{m}/pool_cosine_top32", POOL_COSINE) for m in METHODS]
CASES.append(("facility_location/weighted", {"weighted": True}))


@pytest.mark.parametrize("key,extra", CASES, ids=[k for k, _ in CASES])
def test_same_selections_as_before_the_move(key, extra):
    method = key.split("/")[0]
    assert three_steps(CoresetConfig(within_source=method, selection_seed=7, **extra)) == PINNED[key]


@pytest.mark.parametrize("method", ["random", "mean_match", "cluster_sample", "balanced", "pps"])
def test_weighted_changes_nothing_without_cluster_weights(method):
    # The documented meaning: only facility location defines cluster weights. Before the fix,
    # weighted=True made these methods train with n_q / b_q (pps: with its unscaled weights).
    assert three_steps(CoresetConfig(within_source=method, selection_seed=7, weighted=True)) == PINNED[method]


def test_weighted_facility_location_trains_with_cluster_sizes():
    # The recorded weighted entry: its loss weights are its cluster-size weights, the unweighted
    # entry trains uniform on the same picks.
    weighted, plain = PINNED["facility_location/weighted"], PINNED["facility_location"]
    for w, p in zip(weighted, plain):
        assert w["indices"] == p["indices"] and w["loss_weights"] == w["weights"]
        assert set(p["loss_weights"]) == {1.0} and set(w["weights"]) != {1.0}
