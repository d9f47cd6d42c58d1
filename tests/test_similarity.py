"""pairwise_similarity: golden values, the C - distance convention, and input validation."""
import math

import pytest
import torch

from colm import pairwise_similarity


def test_l1_golden():
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    # distances: d01 = 1, d02 = 2, d12 = 3 -> C = 3
    expected = torch.tensor([[3.0, 2.0, 1.0], [2.0, 3.0, 0.0], [1.0, 0.0, 3.0]])
    assert torch.equal(pairwise_similarity(x, "l1"), expected)
    assert torch.equal(pairwise_similarity(x), expected)  # l1 is the default


def test_l2_golden():
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    c = math.sqrt(5.0)
    expected = torch.tensor(
        [[c, c - 1.0, c - 2.0], [c - 1.0, c, 0.0], [c - 2.0, 0.0, c]], dtype=torch.float64
    )
    torch.testing.assert_close(pairwise_similarity(x, "l2"), expected)


def test_cosine_golden_and_zero_row():
    x = torch.tensor([[1.0, 0.0], [0.0, 3.0], [2.0, 2.0], [0.0, 0.0]])
    r = 1.0 / math.sqrt(2.0)
    expected = torch.tensor(
        [[1.0, 0.0, r, 0.0], [0.0, 1.0, r, 0.0], [r, r, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
    )
    torch.testing.assert_close(pairwise_similarity(x, "cosine"), expected)


@pytest.mark.parametrize("metric,p", [("l1", 1), ("l2", 2)])
def test_matches_bruteforce_and_properties(metric, p):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(9, 17, generator=g, dtype=torch.float64)
    dist = torch.tensor([[float((x[i] - x[j]).abs().pow(p).sum() ** (1 / p)) for j in range(9)] for i in range(9)],
                        dtype=torch.float64)
    sim = pairwise_similarity(x, metric)
    torch.testing.assert_close(sim, dist.max() - dist)
    assert torch.equal(sim, sim.T)  # exactly symmetric
    assert torch.all(sim.diagonal() == sim.max())  # s_ii = C
    assert sim.min().item() == 0.0  # the farthest pair


def test_identical_rows_give_zero_similarity():
    x = torch.ones(4, 3)
    assert torch.equal(pairwise_similarity(x, "l1"), torch.zeros(4, 4))


def test_half_precision_is_upcast():
    x = torch.randn(5, 8).to(torch.bfloat16)
    sim = pairwise_similarity(x, "l1")
    assert sim.dtype == torch.float32
    torch.testing.assert_close(sim, pairwise_similarity(x.float(), "l1"))


@pytest.mark.parametrize(
    "x,match",
    [
        (torch.randn(5), "2-D"),
        (torch.randn(2, 3, 4), "2-D"),
        (torch.empty(0, 3), "at least one row"),
        (torch.ones(3, 2, dtype=torch.long), "floating"),
        (torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), "NaN or inf"),
        (torch.tensor([[1.0, float("inf")], [0.0, 1.0]]), "NaN or inf"),
    ],
)
def test_bad_input(x, match):
    with pytest.raises(ValueError, match=match):
        pairwise_similarity(x)


def test_unknown_metric():
    with pytest.raises(ValueError, match="unknown similarity metric"):
        pairwise_similarity(torch.randn(3, 2), "dot")
