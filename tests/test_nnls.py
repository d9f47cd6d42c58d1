"""NNLS loss weights on the chosen rows: feasible, optimal, and better than uniform weights."""
from __future__ import annotations

import pytest
import torch
from scipy.optimize import nnls as scipy_nnls

from colm.config import CoresetConfig
from colm.selection.methods.mean_match import mean_match
from colm.selection.methods.nnls import nnls_gram, nnls_match, simplex_weights
from colm.selection.selector import CoresetSelector


@pytest.mark.parametrize("seed", range(5))
def test_nnls_gram_equals_scipy_nnls(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(40, 8, generator=gen, dtype=torch.float64)  # [h, b]: columns are rows x_j
    y = torch.randn(40, generator=gen, dtype=torch.float64)
    want, _ = scipy_nnls(A.numpy(), y.numpy())
    got = nnls_gram(A.T @ A, A.T @ y)
    assert (got >= 0).all()
    assert 0 < int((got > 0).sum()) < 8  # the constraint is active: a real test of the active set
    assert torch.allclose(got, torch.from_numpy(want), atol=1e-9)


@pytest.mark.parametrize("seed", range(5))
def test_simplex_weights_are_the_constrained_optimum(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(6, 30, generator=gen, dtype=torch.float64)  # [b, h]
    target = torch.randn(30, generator=gen, dtype=torch.float64) * 0.3
    w = simplex_weights(x, target)
    assert (w >= 0).all() and abs(float(w.sum()) - 1.0) < 1e-12
    best = float((w @ x - target).norm())
    # no point of the simplex fits better: random Dirichlet points and every vertex
    others = torch.distributions.Dirichlet(torch.ones(6, dtype=torch.float64)).sample((2000,))
    assert best <= float((others @ x - target).norm(dim=1).min()) + 1e-9
    assert best <= float((x - target).norm(dim=1).min()) + 1e-9


@pytest.mark.parametrize("seed", range(5))
def test_nnls_match_fits_better_than_uniform_on_the_same_picks(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    # heavy-tailed rows: a few large gradients, as in a pool of per-example gradients
    x = torch.randn(32, 50, generator=gen) * torch.rand(32, 1, generator=gen).pow(3) * 10
    picks, weights = nnls_match(x, 8)
    assert torch.equal(picks, mean_match(x, 8)[0])
    assert weights.shape == (8,) and (weights >= 0).all()
    assert abs(float(weights.mean()) - 1.0) < 1e-5
    mu = x.double().mean(dim=0)
    chosen = x[picks].double()
    weighted = float((weights.double() @ chosen / 8 - mu).norm())
    uniform = float((chosen.mean(dim=0) - mu).norm())
    assert weighted < uniform  # strictly: uniform weights are not optimal on these rows


def test_selector_trains_the_nnls_weights_per_source() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(24, 20, generator=gen) * torch.rand(24, 1, generator=gen).pow(2) * 5
    sources = ["a"] * 12 + ["b"] * 12
    cfg = CoresetConfig(within_source="nnls", adam_normalize=False, topk_dims=None, small_sources="none")
    sel = CoresetSelector(cfg, {"a": 100, "b": 100}).select(x, sources, 8)
    lw = sel.loss_weights
    assert sel.indices.numel() == 8 and (lw >= 0).all()
    in_a = sel.indices < 12
    # each source keeps its share of the loss (mean 1 over its rows); only the spread changes
    assert abs(float(lw[in_a].mean()) - 1) < 1e-5 and abs(float(lw[~in_a].mean()) - 1) < 1e-5
    assert not torch.allclose(lw, torch.ones_like(lw))
    # and the weighted coreset matches each source's pool mean better than its uniform mean
    for rows, mask in ((slice(0, 12), in_a), (slice(12, 24), ~in_a)):
        mu, chosen, w = x[rows].mean(dim=0), x[sel.indices[mask]], lw[mask]
        assert (w @ chosen / w.sum() - mu).norm() < (chosen.mean(dim=0) - mu).norm()
