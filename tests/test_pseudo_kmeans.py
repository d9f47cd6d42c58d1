"""The pieces of pseudo-sources that need no model: seeded k-means, the adjusted Rand index,
'auto' cluster counts and the checkpoint file."""
from __future__ import annotations

import json

import pytest
import torch

from colm.integrations.checkpoints import CheckpointError
from colm.integrations.pseudo_sources import (
    PseudoSourceState,
    adjusted_rand_index,
    auto_clusters,
    kmeans,
    load_pseudo_sources,
    resolve_clusters,
    save_pseudo_sources,
)


def blobs(sizes, dim=5, spread=0.05, seed=0):
    """Points around one random center per blob ([n, dim]) and each point's blob."""
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(len(sizes), dim, generator=gen) * 10
    points, truth = [], []
    for b, n in enumerate(sizes):
        points.append(centers[b] + spread * torch.randn(n, dim, generator=gen))
        truth += [b] * n
    order = torch.randperm(sum(sizes), generator=gen)
    return torch.cat(points)[order], [truth[i] for i in order.tolist()]


# ------------------------------------------------------------------------------- k-means
def test_kmeans_recovers_separated_blobs_largest_first():
    x, truth = blobs([50, 30, 8, 3])
    result = kmeans(x, 4, seed=0)
    assert adjusted_rand_index(result.assignment.tolist(), truth) == pytest.approx(1.0)
    assert result.sizes == [50, 30, 8, 3]  # canonical numbering: cluster 0 is the largest
    assert torch.bincount(result.assignment).tolist() == result.sizes
    # centroids are the cluster means
    for c in range(4):
        torch.testing.assert_close(result.centroids[c], x[result.assignment == c].mean(0), rtol=1e-5, atol=1e-5)


def test_kmeans_is_deterministic_from_the_seed():
    # overlapping blobs: the partition depends on the initialisation, so the seed matters
    x, _ = blobs([40, 40, 40], spread=8.0, seed=1)
    a, b = kmeans(x, 5, seed=3), kmeans(x, 5, seed=3)
    assert torch.equal(a.assignment, b.assignment) and torch.equal(a.centroids, b.centroids)
    others = [kmeans(x, 5, seed=s).assignment for s in range(4, 12)]
    assert any(not torch.equal(a.assignment, o) for o in others)


def test_an_empty_cluster_takes_the_point_farthest_from_its_centroid():
    from colm.integrations.pseudo_sources.clustering import _fill_empty

    # cluster 2 is empty; point 1 is the farthest from its own centroid (cluster 0)
    assignment = torch.tensor([0, 0, 0, 1, 1])
    dist = torch.tensor([[0.1, 9, 9], [3.0, 9, 9], [0.2, 9, 9], [9, 0.5, 9], [9, 0.4, 9]], dtype=torch.float64)
    assert _fill_empty(assignment, dist, 3).tolist() == [0, 2, 0, 1, 1]
    # the farthest point (3) is alone in its cluster: it stays, the next farthest moves
    assignment = torch.tensor([0, 0, 0, 1])
    dist = torch.tensor([[0.1, 9, 9], [0.3, 9, 9], [0.2, 9, 9], [9, 5.0, 9]], dtype=torch.float64)
    assert _fill_empty(assignment, dist, 3).tolist() == [0, 2, 0, 1]


def test_kmeans_with_fewer_distinct_points_than_clusters_splits_duplicates():
    # 2 distinct points, k = 3: one value is split over two clusters, no cluster mixes values
    x = torch.tensor([[1.0, 1.0]] * 5 + [[2.0, 2.0]] * 5)
    result = kmeans(x, 3, seed=0)
    assert len(result.sizes) == 3 and min(result.sizes) >= 1 and sum(result.sizes) == 10
    for c in range(3):
        assert x[result.assignment == c].unique(dim=0).shape[0] == 1


@pytest.mark.parametrize("k", [0, 11, True, 2.0])
def test_kmeans_rejects_bad_k(k):
    with pytest.raises(ValueError, match="k must be an integer in"):
        kmeans(torch.randn(10, 3), k, seed=0)


def test_kmeans_rejects_bad_points():
    with pytest.raises(ValueError, match="non-empty"):
        kmeans(torch.zeros(0, 3), 1, seed=0)
    with pytest.raises(ValueError, match="finite"):
        kmeans(torch.tensor([[0.0], [float("nan")]]), 1, seed=0)


# ------------------------------------------------------------------------------- ARI
def test_ari_known_values():
    assert adjusted_rand_index([0, 0, 1, 1], ["b", "b", "a", "a"]) == 1.0  # names do not matter
    # contingency [[2, 0], [1, 1]]: 1 pair together in both; 2 in a, 3 in b, of 6: expected
    # 2 * 3 / 6 = 1 = the index, so the agreement is exactly what chance gives
    assert adjusted_rand_index([0, 0, 1, 1], [0, 0, 0, 1]) == pytest.approx(0.0)
    value = adjusted_rand_index([0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 2, 2])
    # pairs together in both: 1 + 1 = 2; in a: 3 + 3 = 6; in b: 1 + 1 + 1 = 3; all pairs 15
    expected = 6 * 3 / 15
    assert value == pytest.approx((2 - expected) / ((6 + 3) / 2 - expected))


def test_ari_matches_scikit_learn_on_random_labels():
    metrics = pytest.importorskip("sklearn.metrics")
    gen = torch.Generator().manual_seed(0)
    for k_a, k_b in ((2, 3), (5, 5), (7, 2)):
        a = torch.randint(k_a, (200,), generator=gen).tolist()
        b = torch.randint(k_b, (200,), generator=gen).tolist()
        assert adjusted_rand_index(a, b) == pytest.approx(metrics.adjusted_rand_score(a, b), abs=1e-12)


def test_ari_errors():
    with pytest.raises(ValueError, match="same items"):
        adjusted_rand_index([0, 1], [0])
    with pytest.raises(ValueError, match="at least 2"):
        adjusted_rand_index([0], [0])


# ------------------------------------------------------------------------------- how many
def test_auto_clusters_grow_with_the_data_and_fit_the_pool():
    assert auto_clusters(25_000, pool_size=1024) == 29  # cube root
    assert auto_clusters(25_000, pool_size=32) == 8  # at most a quarter of the pool
    assert auto_clusters(5, pool_size=4) == 2  # at least 2
    assert resolve_clusters(7, 100, 32) == 7
    with pytest.raises(ValueError, match="pseudo_sources = 'auto' asks for 2 clusters.*only 1 rows"):
        resolve_clusters("auto", 1, 32)


# ------------------------------------------------------------------------------- checkpoint file
def make_state():
    return PseudoSourceState(torch.tensor([0, 2, -1, 1, 0]), torch.randn(3, 4), fitted_at_step=7, seed=5,
                             info={"k": 3, "ari_vs_source": 0.5})


def test_state_file_round_trip_without_pickle(tmp_path):
    state = make_state()
    path = tmp_path / "p.safetensors"
    save_pseudo_sources(path, state)
    assert not (tmp_path / "p.safetensors.tmp").exists()
    back = load_pseudo_sources(path, n_rows=5)
    assert torch.equal(back.assignment, state.assignment) and torch.equal(back.centroids, state.centroids)
    assert (back.fitted_at_step, back.seed, back.info) == (7, 5, state.info)
    assert back.sizes() == {"cluster_0": 2, "cluster_1": 1, "cluster_2": 1}
    assert back.labels([1, 0, 3]) == ["cluster_2", "cluster_0", "cluster_1"]
    assert back.labels([1]) == ["cluster_2"]
    with pytest.raises(ValueError, match="training row 2 has no supervised token"):
        back.labels([1, 2])


def test_state_file_errors_name_the_file(tmp_path):
    path = tmp_path / "p.safetensors"
    save_pseudo_sources(path, make_state())
    with pytest.raises(CheckpointError, match="fitted on 5 training rows, this training set has 6"):
        load_pseudo_sources(path, n_rows=6)
    torn = tmp_path / "torn.safetensors"
    torn.write_bytes(path.read_bytes()[:40])
    with pytest.raises(CheckpointError, match="torn.safetensors"):
        load_pseudo_sources(torn, n_rows=5)
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"assignment": torch.zeros(5, dtype=torch.int32)}, str(foreign), metadata={"colm": json.dumps({"format": "x"})})
    with pytest.raises(CheckpointError, match="not a colm pseudo-source file"):
        load_pseudo_sources(foreign, n_rows=5)
    bad_ids = tmp_path / "bad_ids.safetensors"
    save_pseudo_sources(bad_ids, PseudoSourceState(torch.tensor([0, 3, 1, 1, 0]), torch.randn(3, 4), 1, 0))
    with pytest.raises(CheckpointError, match=r"outside \[-1, 3\)"):
        load_pseudo_sources(bad_ids, n_rows=5)
