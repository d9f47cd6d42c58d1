"""The fused numba loops (colm.selection.kernels) against the torch code they stand in for."""
import pytest
import torch

pytest.importorskip("numba")

import normalize_reference as ref  # noqa: E402

import colm.selection.kernels as kernels  # noqa: E402
import colm.selection.passes as passes_mod  # noqa: E402
from colm import AdamNormalizer, CoresetConfig, CoresetSelector  # noqa: E402


@pytest.fixture(params=[1, 3], ids=["1-thread", "3-threads"])
def threads(request, monkeypatch):
    """Run with one thread, and with several over blocks narrow enough that each gets some."""
    monkeypatch.setattr(kernels, "BLOCK_COLUMNS", 8)
    previous = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(previous)


def torch_feature_sums(norm, g, groups, n_groups, monkeypatch):
    monkeypatch.setenv("COLM_NUMBA", "0")
    try:
        return ref.feature_sums(norm, g, groups, n_groups)
    finally:
        monkeypatch.delenv("COLM_NUMBA")


def test_adam_group_sums_equal_torch(threads, monkeypatch):
    gen = torch.Generator().manual_seed(0)
    n, d = 9, 61  # d not a multiple of the block
    g = torch.randn(n, d, generator=gen)
    g[2, 5] = 0.0  # a zero gradient with zero history gives 0 / eps
    norm = AdamNormalizer()
    norm.load_state_dict({"m": torch.randn(d, generator=gen) * 0.1, "v": torch.rand(d, generator=gen) * 0.1, "step": 4})
    norm.v[5] = 0.0
    norm.m[5] = 0.0
    groups = torch.tensor([3, 0, 3, 1, 0, 0, 3, 1, 0])  # group 2 empty
    expected, expected_raw = torch_feature_sums(norm, g, groups, 4, monkeypatch)
    sums, raw = kernels.adam_group_sums(g, norm.m, norm.v, groups, 4, norm.reference()[2], norm.eps)
    torch.testing.assert_close(sums, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(raw, expected_raw, rtol=1e-5, atol=1e-6)
    assert torch.equal(sums[2], torch.zeros(d))
    # deterministic whatever the split: the same bits as a one-thread run
    torch.set_num_threads(1)
    again, _ = kernels.adam_group_sums(g, norm.m, norm.v, groups, 4, norm.reference()[2], norm.eps)
    assert torch.equal(again, sums)


def test_gather_and_selected_sums_equal_torch(threads):
    gen = torch.Generator().manual_seed(1)
    g = torch.randn(12, 50, generator=gen)
    rows = torch.tensor([11, 0, 4, 7])
    cols = torch.tensor([0, 3, 4, 31, 49])
    assert torch.equal(kernels.gather(g, rows, cols), g[rows][:, cols])
    lin_w = torch.rand(2, 4, generator=gen)
    sq_w = torch.rand(1, 4, generator=gen)
    lin, sq = kernels.selected_sums(g, rows, lin_w, sq_w)
    torch.testing.assert_close(lin, lin_w @ g[rows])
    torch.testing.assert_close(sq, sq_w @ g[rows] ** 2)
    lin_only, none = kernels.selected_sums(g, rows, lin_w, None)
    assert none is None and torch.equal(lin_only, lin)


def test_applicable_only_where_exact_and_worth_it(monkeypatch):
    monkeypatch.setattr(kernels, "MIN_ELEMENTS", 100)
    big = torch.zeros(10, 20)
    assert kernels.applicable(big)
    assert not kernels.applicable(torch.zeros(5, 10))  # too small to pay off
    assert not kernels.applicable(big.double())
    assert not kernels.applicable(big.half())
    assert not kernels.applicable(big.T)  # not contiguous
    monkeypatch.setenv("COLM_NUMBA", "0")
    assert not kernels.applicable(big)


@pytest.mark.parametrize("adam", [True, False])
def test_selection_same_with_and_without_kernels(adam, monkeypatch):
    """Several steps (history growing) pick the same rows with the fused loops as without."""
    monkeypatch.setattr(kernels, "MIN_ELEMENTS", 0)
    monkeypatch.setattr(kernels, "BLOCK_COLUMNS", 64)
    monkeypatch.setattr(passes_mod, "_CPU_BLOCK_ELEMENTS", 512)
    gen = torch.Generator().manual_seed(2)
    n, d = 48, 700
    sizes = {"a": 1000, "b": 800, "c": 30}
    sources = ["a", "b"] * 22 + ["c"] * 4
    cfg = CoresetConfig(topk_dims=40, adam_normalize=adam)
    fused, plain = CoresetSelector(cfg, sizes), CoresetSelector(cfg, sizes)
    for _ in range(4):
        g = torch.randn(n, d, generator=gen) * torch.rand(1, d, generator=gen)
        a = fused.select(g, sources, 20)
        monkeypatch.setenv("COLM_NUMBA", "0")
        b = plain.select(g, sources, 20)
        monkeypatch.delenv("COLM_NUMBA")
        assert torch.equal(a.indices, b.indices)
        torch.testing.assert_close(a.weights, b.weights)
        assert a.stats["match_error"] == pytest.approx(b.stats["match_error"], rel=1e-4)
    if adam:
        torch.testing.assert_close(fused.normalizer.m, plain.normalizer.m)
        torch.testing.assert_close(fused.normalizer.v, plain.normalizer.v)


def test_a_numba_failure_falls_back_to_torch_with_a_warning(monkeypatch):
    def broken():
        raise RuntimeError("no LLVM target for this CPU")

    monkeypatch.setattr(kernels, "_build", broken)
    monkeypatch.setattr(kernels, "_kernels", None)
    monkeypatch.setattr(kernels, "_failed", False)
    monkeypatch.setattr(kernels, "MIN_ELEMENTS", 0)
    with pytest.warns(RuntimeWarning, match="numba kernels unavailable"):
        assert not kernels.applicable(torch.zeros(4, 4))
    # the selector still works, through torch
    selection = CoresetSelector(CoresetConfig(topk_dims=2), {"a": 10}).select(torch.randn(6, 8), ["a"] * 6, 3)
    assert selection.indices.numel() == 3
