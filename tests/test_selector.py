"""CoresetSelector end to end: contracts, edge cases, bad input, resume equality, device."""
import io

import pytest
import torch

from colm import CoresetConfig, CoresetSelector, Selection
from colm.errors import ConfigError
from colm.selection.budget import split_budget

SIZES = {"math": 1000, "code": 800, "chat": 600, "rare": 20, "tiny": 5}  # mean 485: rare, tiny small


def pool(n=40, d=64, seed=0, sources=None):
    gen = torch.Generator().manual_seed(seed)
    feats = torch.randn(n, d, generator=gen)
    if sources is None:
        names = ["math", "code", "chat"]
        sources = [names[i % 3] for i in range(n - 4)] + ["rare", "rare", "tiny", "rare"]
    return feats, sources


def check_selection(sel: Selection, n: int, budget: int, expect_full_weight=True):
    assert isinstance(sel, Selection)
    assert sel.indices.dtype == torch.long and sel.indices.shape == (budget,)
    assert sel.weights.shape == (budget,)
    assert len(set(sel.indices.tolist())) == budget  # no duplicates
    assert sel.indices.min() >= 0 and sel.indices.max() < n
    assert torch.all(sel.indices[1:] > sel.indices[:-1])  # ascending
    assert torch.all(sel.weights >= 1)
    if expect_full_weight:
        assert sel.weights.sum().item() == n
    for key in ("kept_small", "objective", "match_error", "select_ms", "n_large_sources"):
        assert isinstance(sel.stats[key], float)


def test_basic_contract_and_small_sources_kept():
    feats, sources = pool()
    sel = CoresetSelector(CoresetConfig(within_source="facility_location", topk_dims=16), SIZES).select(feats, sources, 20)
    check_selection(sel, 40, 20)
    small_rows = [i for i, s in enumerate(sources) if s in ("rare", "tiny")]
    assert set(small_rows) <= set(sel.indices.tolist())
    assert sel.stats["kept_small"] == 4.0 and sel.stats["overflow"] == 0.0
    assert sel.stats["n_large_sources"] == 3.0
    # per-source counts follow split_budget over the large sources' pool counts (12 each)
    assert [sel.stats[f"selected/{s}"] for s in ("math", "code", "chat")] == split_budget(16, [12, 12, 12])
    assert sel.stats["selected/rare"] == 3.0 and sel.stats["selected/tiny"] == 1.0
    assert sel.stats["objective"] > 0
    # kept small examples stand for themselves
    small_pos = [sel.indices.tolist().index(i) for i in small_rows]
    assert sel.weights[small_pos].tolist() == [1.0] * 4


@pytest.mark.parametrize("weighted", [False, True])
def test_match_error_matches_definition(weighted):
    # the match error is that of what the trainer trains on: uniform unless weighted
    feats, sources = pool(seed=3)
    sel = CoresetSelector(CoresetConfig(within_source="facility_location", topk_dims=8, weighted=weighted), SIZES).select(feats, sources, 15)
    w = sel.loss_weights
    assert torch.equal(w, sel.weights) if weighted else torch.equal(w, torch.ones(15))
    coreset_mean = (w[:, None] * feats[sel.indices]).sum(0) / w.sum()
    pool_mean = feats.mean(0)
    expected = ((coreset_mean - pool_mean).norm() / pool_mean.norm()).item()
    assert sel.stats["match_error"] == pytest.approx(expected, rel=1e-4)


def test_picks_one_medoid_per_cluster():
    # one source, four tight well-separated clusters of 5: budget 4 must pick one from each
    gen = torch.Generator().manual_seed(0)
    centers = torch.tensor([[0.0, 0.0], [50.0, 0.0], [0.0, 50.0], [50.0, 50.0]])
    feats = (centers.repeat_interleave(5, 0) + 0.1 * torch.randn(20, 2, generator=gen))
    cfg = CoresetConfig(within_source="facility_location", adam_normalize=False, topk_dims=None, small_sources="none")
    sel = CoresetSelector(cfg, {"a": 10}).select(feats, ["a"] * 20, 4)
    assert sorted(i // 5 for i in sel.indices.tolist()) == [0, 1, 2, 3]
    assert sel.weights.tolist() == [5.0, 5.0, 5.0, 5.0]


def test_budget_equals_pool_returns_everything():
    feats, sources = pool()
    sel = CoresetSelector(CoresetConfig(within_source="facility_location"), SIZES).select(feats, sources, 40)
    check_selection(sel, 40, 40)
    assert sel.indices.tolist() == list(range(40))
    assert sel.weights.tolist() == [1.0] * 40
    assert sel.stats["match_error"] == pytest.approx(0.0, abs=1e-5)


def test_overflow_is_deterministic_and_never_negative():
    feats, _ = pool(n=10)
    sources = ["rare"] * 4 + ["tiny"] * 3 + ["math"] * 3
    sel = CoresetSelector(CoresetConfig(within_source="facility_location"), SIZES).select(feats, sources, 3)
    check_selection(sel, 10, 3, expect_full_weight=False)
    # round-robin from the rarest source ("tiny", 5): tiny 4, rare 0, tiny 5
    assert sel.indices.tolist() == [0, 4, 5]
    assert sel.stats["overflow"] == 1.0 and sel.stats["dropped_small"] == 4.0
    assert sel.stats["budget_large"] == 0.0 and sel.stats["selected/math"] == 0.0
    assert sel.weights.tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize(
    "n,sources,budget",
    [
        (1, ["math"], 1),  # one example
        (1, ["tiny"], 1),  # one small example
        (12, ["code"] * 12, 5),  # one source
        (6, ["rare", "tiny"] * 3, 4),  # all small (overflow)
        (6, ["rare", "tiny"] * 3, 6),  # all small, all kept
    ],
)
def test_edge_cases(n, sources, budget):
    feats, _ = pool(n=n)
    sel = CoresetSelector(CoresetConfig(within_source="facility_location"), SIZES).select(feats, sources, budget)
    full = sum(1 for s in sources if s in ("rare", "tiny")) <= budget
    check_selection(sel, n, budget, expect_full_weight=full)


def test_duplicate_features_give_distinct_indices():
    feats = torch.ones(16, 8)
    feats[8:] = 2.0
    sel = CoresetSelector(CoresetConfig(within_source="facility_location", small_sources="none"), SIZES).select(feats, ["math"] * 16, 5)
    check_selection(sel, 16, 5)


@pytest.mark.parametrize(
    "cfg",
    [
        CoresetConfig(within_source="facility_location", similarity="l2", topk_dims=4),
        CoresetConfig(within_source="facility_location", similarity="cosine", topk_dims=None),
        CoresetConfig(within_source="facility_location", adam_normalize=False, topk_dims=8),
        CoresetConfig(within_source="facility_location", small_sources=["tiny"], topk_dims=1000),  # topk >= d keeps all
    ],
)
def test_config_variants(cfg):
    feats, sources = pool(seed=5)
    sel = CoresetSelector(cfg, SIZES).select(feats, sources, 17)
    check_selection(sel, 40, 17)


def test_source_label_forms():
    feats, _ = pool(n=12)
    sizes = {0: 100, 1: 100, 2: 3}
    ids = torch.tensor([0, 1] * 5 + [2, 2])
    a = CoresetSelector(CoresetConfig(within_source="facility_location"), sizes).select(feats, ids, 6)
    b = CoresetSelector(CoresetConfig(within_source="facility_location"), sizes).select(feats, ids.tolist(), 6)
    c = CoresetSelector(CoresetConfig(within_source="facility_location"), sizes).select(feats, [str(i) for i in ids.tolist()], 6)
    np = pytest.importorskip("numpy")
    d = CoresetSelector(CoresetConfig(within_source="facility_location"), sizes).select(feats, np.array(ids.tolist()), 6)
    assert a.indices.tolist() == b.indices.tolist() == c.indices.tolist() == d.indices.tolist()
    assert a.stats["kept_small"] == 2.0 and "selected/2" in a.stats
    assert CoresetSelector(CoresetConfig(within_source="facility_location", small_sources=["1"]), sizes).small_source_names == [1]


@pytest.mark.parametrize(
    "features,sources,budget,match",
    [
        (torch.tensor([[1.0, float("nan")]] * 4), ["math"] * 4, 2, "NaN or inf"),
        (torch.tensor([[1.0, float("inf")]] * 4), ["math"] * 4, 2, "NaN or inf"),
        (torch.tensor([[1.0, float("-inf")], [0.0, 2.0]]), ["rare", "rare"], 1, "NaN or inf"),
        (torch.randn(4), ["math"] * 4, 2, "2-D"),
        (torch.randn(4, 2, 2), ["math"] * 4, 2, "2-D"),
        (torch.ones(4, 2, dtype=torch.long), ["math"] * 4, 2, "floating"),
        ([[1.0, 2.0]], ["math"], 1, "torch.Tensor"),
        (torch.randn(4, 3), ["math"] * 3, 2, "4 rows but sources has 3"),
        (torch.randn(4, 3), torch.zeros(5, dtype=torch.long), 2, "4 rows but sources has 5"),
        (torch.randn(4, 3), torch.zeros(2, 2, dtype=torch.long), 2, "1-D"),
        (torch.randn(4, 3), "mmmm", 2, "sequence"),
        (torch.randn(4, 3), ["math"] * 4, 0, "budget"),
        (torch.randn(4, 3), ["math"] * 4, 5, "budget"),
        (torch.randn(4, 3), ["math"] * 4, -1, "budget"),
        (torch.randn(4, 3), ["math"] * 4, 2.0, "budget"),
        (torch.randn(4, 3), ["math"] * 3 + ["nope"], 2, "'nope' is not in source_sizes"),
    ],
)
def test_bad_input(features, sources, budget, match):
    selector = CoresetSelector(CoresetConfig(within_source="facility_location"), SIZES)
    with pytest.raises(ValueError, match=match):
        selector.select(features, sources, budget)
    assert selector.normalizer.step == 0 and selector.calls == 0  # nothing was recorded


def test_bad_construction():
    with pytest.raises(ValueError, match="non-empty"):
        CoresetSelector(CoresetConfig(within_source="facility_location"), {})
    with pytest.raises(ValueError, match="integer >= 0"):
        CoresetSelector(CoresetConfig(within_source="facility_location"), {"a": -1})
    with pytest.raises(ValueError, match="collide"):
        CoresetSelector(CoresetConfig(within_source="facility_location"), {1: 3, "1": 4})
    with pytest.raises(ValueError, match="unknown source"):
        CoresetSelector(CoresetConfig(within_source="facility_location", small_sources=["zz"]), {"a": 3})


def _run(selector, steps):
    out = []
    for step in steps:
        feats, sources = pool(n=40, d=96, seed=10 + step)
        sel = selector.select(feats, sources, 18)
        stats = {k: v for k, v in sel.stats.items() if k != "select_ms"}
        out.append((sel.indices.tolist(), sel.weights.tolist(), stats))
    return out


def test_resume_from_state_dict_selects_identically():
    cfg = CoresetConfig(within_source="facility_location", topk_dims=24)
    straight = _run(CoresetSelector(cfg, SIZES), range(5))
    first = CoresetSelector(cfg, SIZES)
    head = _run(first, range(2))
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    resumed = CoresetSelector(cfg, SIZES)
    resumed.load_state_dict(torch.load(buf))
    tail = _run(resumed, range(2, 5))
    assert head + tail == straight
    assert resumed.normalizer.step == 5
    assert [step[2]["adam_step"] for step in straight] == [1.0, 2.0, 3.0, 4.0, 5.0]


def test_adam_history_is_mean_of_selected_large_rows():
    feats, sources = pool(seed=4)
    selector = CoresetSelector(CoresetConfig(within_source="facility_location", topk_dims=8), SIZES)
    sel = selector.select(feats, sources, 20)
    large = [i for i in sel.indices.tolist() if sources[i] not in ("rare", "tiny")]
    g = feats[large]
    torch.testing.assert_close(selector.normalizer.m, 0.1 * g.mean(0))
    torch.testing.assert_close(selector.normalizer.v, 0.001 * (g * g).mean(0))
    assert selector.normalizer.step == 1


@pytest.mark.gpu
def test_cuda_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from colm import facility_location

    # facility location on a tie-free kernel: the same picks on both devices
    sim = torch.rand(128, 128, generator=torch.Generator().manual_seed(0))
    idx_cpu, gains_cpu = facility_location(sim, 64)
    idx_gpu, gains_gpu = facility_location(sim.cuda(), 64)
    assert idx_gpu.is_cuda and idx_gpu.tolist() == idx_cpu.tolist()
    torch.testing.assert_close(gains_gpu.cpu(), gains_cpu)
    # whole selection: valid on CUDA, same per-source budgets, close objective (near-ties in
    # float sums may be broken differently on the two devices)
    cfg = CoresetConfig(within_source="facility_location", topk_dims=32)
    cpu, gpu = CoresetSelector(cfg, SIZES), CoresetSelector(cfg, SIZES)
    feats, sources = pool(n=64, d=512, seed=1)
    a = cpu.select(feats, sources, 30)
    b = gpu.select(feats.cuda(), sources, 30)
    assert b.indices.is_cuda and b.weights.is_cuda
    check_selection(Selection(b.indices.cpu(), b.weights.cpu(), b.stats), 64, 30)
    for key, value in a.stats.items():
        if key.startswith("selected/") or key in ("kept_small", "budget_large", "adam_step"):
            assert b.stats[key] == value
    assert b.stats["objective"] == pytest.approx(a.stats["objective"], rel=1e-2)
    assert gpu.normalizer.m.is_cuda


def test_top_columns_equals_full_topk():
    from colm.selection.passes import top_columns as _top_columns

    gen = torch.Generator().manual_seed(0)
    for d, k in [(100_000, 256), (5_000, 300), (2_000, 2_000)]:
        score = torch.rand(d, generator=gen) ** 3  # skewed, no ties
        expected = torch.sort(torch.topk(score, k).indices).values
        assert torch.equal(_top_columns(score, k), expected)
    # many ties at the top: the sampled threshold keeps too many or too few; still k distinct
    score = torch.zeros(100_000)
    score[:10] = 1.0
    cols = _top_columns(score, 256)
    assert cols.numel() == 256 and set(range(10)) <= set(cols.tolist())
    assert torch.all(cols[1:] > cols[:-1])


# ---------------------------------------------------------------- within-source methods
METHODS = ("facility_location", "random", "mean_match", "cluster_sample", "pps", "balanced")


@pytest.mark.parametrize("method", METHODS)
def test_every_method_keeps_the_contract(method):
    feats, sources = pool(seed=6)
    sel = CoresetSelector(CoresetConfig(within_source=method, topk_dims=16), SIZES).select(feats, sources, 20)
    check_selection(sel, 40, 20)
    small_rows = [i for i, s in enumerate(sources) if s in ("rare", "tiny")]
    assert set(small_rows) <= set(sel.indices.tolist())
    assert [sel.stats[f"selected/{s}"] for s in ("math", "code", "chat")] == split_budget(16, [12, 12, 12])
    if method == "pps":  # Horvitz-Thompson loss weights, mean 1 within each large source
        for name in ("math", "code", "chat"):
            rows = [k for k, i in enumerate(sel.indices.tolist()) if sources[i] == name]
            assert sel.loss_weights[rows].mean().item() == pytest.approx(1.0, rel=1e-5)
    else:
        assert torch.equal(sel.loss_weights, torch.ones(20))


def test_random_needs_no_features_and_is_seeded_by_seed_and_step():
    _, sources = pool()
    cfg = CoresetConfig(within_source="random")
    a, b = CoresetSelector(cfg, SIZES), CoresetSelector(cfg, SIZES)
    first = [a.select(None, sources, 20) for _ in range(3)]
    again = [b.select(None, sources, 20) for _ in range(3)]
    assert [s.indices.tolist() for s in first] == [s.indices.tolist() for s in again]
    assert first[0].indices.tolist() != first[1].indices.tolist()  # a new draw every step
    assert "match_error" not in first[0].stats and first[0].stats["kept_small"] == 4.0
    assert first[0].weights.sum().item() == pytest.approx(40.0)  # each pick stands for n_q / b_q
    other = CoresetSelector(CoresetConfig(within_source="random", selection_seed=1), SIZES).select(None, sources, 20)
    assert other.indices.tolist() != first[0].indices.tolist()
    # resume: the step counter is the selector's state
    resumed = CoresetSelector(cfg, SIZES)
    resumed.load_state_dict(a.state_dict())
    assert resumed.select(None, sources, 20).indices.tolist() == b.select(None, sources, 20).indices.tolist()


def test_feature_methods_refuse_missing_features():
    _, sources = pool()
    with pytest.raises(ValueError, match="features are required with within_source='facility_location'"):
        CoresetSelector(CoresetConfig(within_source="facility_location"), SIZES).select(None, sources, 20)


def is_greedy_outcome(sim: torch.Tensor, chosen: list[int]) -> bool:
    """Whether greedy facility location on ``sim`` can end with the set ``chosen`` under some
    way of breaking ties: at every step a not-yet-taken member of ``chosen`` must have the
    largest gain (relative tolerance 1e-6: the selector's similarities are float32 distances).
    Every tied choice is tried (depth first), since breaking a tie differently changes the
    later gains."""

    def search(best: torch.Tensor, left: frozenset) -> bool:
        if not left:
            return True
        gains = (sim - best[:, None]).clamp_min(0).sum(0)  # [n]; gain of every column
        taken = set(chosen) - left
        top = float(gains[[j for j in range(sim.shape[0]) if j not in taken]].max())
        tied = [j for j in sorted(left) if float(gains[j]) >= top * (1 - 1e-6) - 1e-9]
        return any(search(torch.maximum(best, sim[:, j]), left - {j}) for j in tied)

    return search(torch.zeros(sim.shape[0], dtype=sim.dtype), frozenset(chosen))


@pytest.mark.parametrize("method", ["facility_location", "mean_match"])
@pytest.mark.parametrize("rank_one", [True, False])
def test_first_selection_does_not_depend_on_row_order(method, rank_one):
    # Before the fix, the empty Adam history turned features into sign vectors and the first
    # selection took the first rows of each source (with rank-1 zo features every row of one
    # sign was identical; with full-rank ones the l1 distances of sign vectors tie in bulk).
    # Permuting the pool must permute the selection, up to exact ties.
    from colm.selection.similarity import pairwise_similarity

    gen = torch.Generator().manual_seed(7)
    n, d = 36, 48
    if rank_one:  # zo with m = 1: c_i * z
        feats = torch.randn(n, 1, generator=gen) * torch.randn(1, d, generator=gen)
    else:
        feats = torch.randn(n, d, generator=gen)
    sources = ["math", "code"] * (n // 2)
    cfg = CoresetConfig(within_source=method, small_sources="none", topk_dims=None)
    base = CoresetSelector(cfg, SIZES).select(feats, sources, 12).indices.tolist()
    assert base != list(range(12))  # not the first 6 rows of each source
    perm = torch.randperm(n, generator=gen)
    moved = CoresetSelector(cfg, SIZES).select(feats[perm], [sources[i] for i in perm], 12)
    moved = sorted(perm[moved.indices].tolist())
    if not rank_one:
        assert moved == sorted(base)
        return
    # 1-D facility location has exact ties (equal gains), broken by position: compare the
    # objective each source reaches in the first step's feature space instead
    normalized = feats / feats.square().mean(0).sqrt()
    for name in ("math", "code"):
        rows = [i for i in range(n) if sources[i] == name]
        sim = pairwise_similarity(normalized[rows].double(), "l1")
        pick = lambda chosen: torch.tensor([rows.index(i) for i in chosen if i in rows])  # noqa: E731
        if method == "facility_location":
            assert is_greedy_outcome(sim, pick(moved).tolist())
            assert is_greedy_outcome(sim, pick(base).tolist())
            a, b = 0.0, 0.0
        else:
            x = normalized[rows].double()
            a, b = ((x[pick(c)].mean(0) - x.mean(0)).norm() for c in (base, moved))
        assert float(a) == pytest.approx(float(b), rel=1e-9)


# ---------------------------------------------------------------- poisoned input and state
def test_huge_features_are_refused_and_leave_the_state_clean():
    feats, sources = pool(seed=1)
    selector = CoresetSelector(CoresetConfig(within_source="facility_location", topk_dims=16), SIZES)
    selector.select(feats, sources, 20)
    before = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in selector.normalizer.state_dict().items()}
    with pytest.raises(ValueError, match="too large"):
        selector.select(feats * 1e20, sources, 20)  # finite, but g^2 overflows float32
    after = selector.normalizer.state_dict()
    assert after["step"] == before["step"] == 1 and selector.calls == 1
    assert torch.equal(after["m"], before["m"]) and torch.equal(after["v"], before["v"])
    # the next good pool selects normally, with distinct rows
    sel = selector.select(feats, sources, 20)
    check_selection(sel, 40, 20)
    assert torch.isfinite(selector.normalizer.v).all()
    with pytest.raises(ValueError, match="too large"):  # also on the very first step
        CoresetSelector(CoresetConfig(within_source="facility_location"), SIZES).select(feats * 1e20, sources, 20)


def test_stats_stay_finite_for_large_finite_features():
    feats, sources = pool(seed=2)
    cfg = CoresetConfig(within_source="facility_location", similarity="cosine", adam_normalize=False, topk_dims=None)
    sel = CoresetSelector(cfg, SIZES).select(feats * 1e30, sources, 20)
    check_selection(sel, 40, 20)
    assert all(v == v and abs(v) != float("inf") for v in sel.stats.values())  # no NaN/inf


def test_bool_budget_and_meta_features_are_refused():
    feats, sources = pool()
    selector = CoresetSelector(CoresetConfig(within_source="facility_location"), SIZES)
    with pytest.raises(ConfigError, match=r"budget = True is invalid: expected an integer in \[1, 40") as err:
        selector.select(feats, sources, True)
    assert err.value.field == "budget"
    with pytest.raises(ValueError, match="meta device"):
        selector.select(torch.empty(40, 8, device="meta"), sources, 20)


@pytest.mark.parametrize(
    "state,match",
    [
        ({"version": 1, "calls": 1, "normalizer": {"m": torch.tensor([1.0, float("inf")]), "v": torch.ones(2), "step": 1}}, "corrupt"),
        ({"version": 1, "calls": 1, "normalizer": {"m": torch.ones(2), "v": -torch.ones(2), "step": 1}}, "corrupt"),
        ({"version": 1, "calls": -3, "normalizer": {"m": None, "v": None, "step": 0}}, "calls"),
        ({"version": 1, "calls": 2, "normalizer": {"m": None, "v": None, "step": "x"}}, "step"),
        ({"version": 7}, "version"),
    ],
)
def test_corrupt_state_is_refused(state, match):
    selector = CoresetSelector(CoresetConfig(within_source="facility_location"), SIZES)
    with pytest.raises(ValueError, match=match):
        selector.load_state_dict(state)


@pytest.mark.parametrize("feature", ["zo", "exact", "hidden"])
def test_first_selection_on_real_features_follows_a_permutation(feature):
    # The same check on the features of a tiny Llama, for every feature type.
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from tiny_models import padded_batch, tiny_model

    from colm import gradient_features
    from colm.selection.similarity import pairwise_similarity

    model = tiny_model("llama")
    batch = padded_batch(n=24, T=12, seed=4)
    cfg = CoresetConfig(within_source="facility_location", feature=feature, small_sources="none", topk_dims=None, zo_probes=1)
    sources = ["math", "code"] * 12
    feats = gradient_features(model, batch, cfg)
    perm = torch.randperm(24, generator=torch.Generator().manual_seed(1))
    feats_perm = gradient_features(model, {k: v[perm] for k, v in batch.items()}, cfg)
    torch.testing.assert_close(feats_perm, feats[perm], rtol=1e-5, atol=1e-6)
    base = CoresetSelector(cfg, SIZES).select(feats, sources, 8).indices.tolist()
    moved = CoresetSelector(cfg, SIZES).select(feats_perm, [sources[i] for i in perm], 8).indices
    moved = sorted(perm[moved].tolist())
    assert base != [0, 1, 2, 3, 4, 5, 6, 7]
    if feature != "zo":
        assert moved == sorted(base)
        return
    normalized = feats / feats.square().mean(0).sqrt()  # zo with m = 1 is rank 1: exact ties
    for name in ("math", "code"):
        rows = [i for i in range(24) if sources[i] == name]
        sim = pairwise_similarity(normalized[rows].double(), "l1")
        for chosen in (base, moved):
            assert is_greedy_outcome(sim, [rows.index(i) for i in chosen if i in rows])


FEATURE_METHODS = ["facility_location", "mean_match", "cluster_sample", "pps", "balanced", "nnls"]


@pytest.mark.parametrize("method", FEATURE_METHODS)
@pytest.mark.parametrize("second_moment", ["per_example", "pool"])
def test_small_source_rows_need_no_features(method, second_moment):
    # A small source is kept whole whatever its features say, so the trainer scores only the
    # rows of large sources (rows_read) and passes zeros for the rest: the same coreset, with the
    # same weights and Adam history, over three steps.
    cfg = CoresetConfig(within_source=method, topk_dims=16, adam_second_moment=second_moment, selection_seed=3)
    full, skipped = CoresetSelector(cfg, SIZES), CoresetSelector(cfg, SIZES)
    for step in range(3):
        feats, sources = pool(seed=10 + step)
        read = skipped.rows_read(sources)
        assert read.tolist() == [s not in ("rare", "tiny") for s in sources]
        zeroed = feats * read[:, None]
        a = full.select(feats, sources, 20)
        b = skipped.select(zeroed, sources, 20, scored=read)
        assert torch.equal(a.indices, b.indices)
        assert torch.allclose(a.loss_weights, b.loss_weights) and torch.allclose(a.weights, b.weights)
        assert b.stats["objective"] == pytest.approx(a.stats["objective"], rel=1e-5)
    assert torch.allclose(full.normalizer.state_dict()["m"], skipped.normalizer.state_dict()["m"])
    # The match error compares the coreset's mean with the pool's over the scored rows only.
    w = b.loss_weights * read[b.indices]
    coreset_mean = (w[:, None] * feats[b.indices]).sum(0) / w.sum()
    pool_mean = feats[read].mean(0)
    assert b.stats["match_error"] == pytest.approx(((coreset_mean - pool_mean).norm() / pool_mean.norm()).item(),
                                                   rel=1e-4)


def test_scored_must_cover_the_rows_a_selection_reads():
    feats, sources = pool()
    selector = CoresetSelector(CoresetConfig(within_source="facility_location", topk_dims=16), SIZES)
    read = selector.rows_read(sources)
    read[0] = False  # a row of a large source left unscored
    with pytest.raises(ValueError, match="leaves out 1 large-source row"):
        selector.select(feats, sources, 20, scored=read)
    with pytest.raises(ValueError, match="bool tensor"):
        selector.select(feats, sources, 20, scored=torch.ones(3, dtype=torch.bool))
