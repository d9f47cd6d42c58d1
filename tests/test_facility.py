"""facility_location: greedy optimality claims, determinism, gains, cluster weights, submodlib."""
import itertools
import math

import pytest
import torch

from colm import cluster_weights, facility_location, pairwise_similarity
from colm.selection.methods.facility_location import facility_objective


def objective(sim, subset):
    """F(S) = sum_i max(0, max_{j in S} sim[i][j]), written plainly."""
    total = 0.0
    for i in range(len(sim)):
        total += max([0.0] + [float(sim[i][j]) for j in subset])
    return total


def reference_greedy(sim, budget, tol=1e-9):
    """Textbook greedy: add the element with the largest marginal gain; among gains within
    ``tol`` of the best (ties up to rounding), the lowest index."""
    n = len(sim)
    chosen, gains = [], []
    best = [0.0] * n  # current max(0, max_{j in S} sim[i][j]) per row
    for _ in range(budget):
        cand = {j: sum(max(0.0, sim[i][j] - best[i]) for i in range(n)) for j in range(n) if j not in chosen}
        top = max(cand.values())
        j = min(k for k, v in cand.items() if v >= top - tol)
        chosen.append(j)
        gains.append(cand[j])
        best = [max(best[i], sim[i][j]) for i in range(n)]
    return chosen, gains


def random_sim(n, seed, d=5):
    g = torch.Generator().manual_seed(seed)
    return pairwise_similarity(torch.randn(n, d, generator=g, dtype=torch.float64), "l1")


@pytest.mark.parametrize("seed", range(6))
def test_greedy_vs_bruteforce_and_reference(seed):
    n = 8 + seed % 5  # 8..12
    sim = random_sim(n, seed)
    rows = sim.tolist()
    for budget in (1, 2, 3):
        idx, gains = facility_location(sim, budget)
        value = objective(rows, idx.tolist())
        opt = max(objective(rows, list(s)) for s in itertools.combinations(range(n), budget))
        assert value >= (1 - 1 / math.e) * opt - 1e-9
        assert value <= opt + 1e-9
        ref_idx, ref_gains = reference_greedy(rows, budget)
        assert idx.tolist() == ref_idx
        assert gains.tolist() == pytest.approx(ref_gains, rel=1e-12, abs=1e-9)
    # the first pick is optimal on its own
    idx, _ = facility_location(sim, 1)
    assert objective(rows, idx.tolist()) == pytest.approx(
        max(objective(rows, [j]) for j in range(n)))


@pytest.mark.parametrize("budget", [1, 5, 16, 32])
def test_gains_sum_to_objective_and_decrease(budget):
    sim = random_sim(32, 3, d=8).float()
    idx, gains = facility_location(sim, budget)
    assert idx.dtype == torch.long and idx.shape == (budget,) and gains.shape == (budget,)
    assert len(set(idx.tolist())) == budget
    torch.testing.assert_close(gains.sum(), facility_objective(sim, idx), rtol=1e-5, atol=1e-4)
    assert torch.all(gains[1:] <= gains[:-1] + 1e-4)  # submodular: greedy gains never increase
    assert torch.all(gains >= 0)


def test_golden_identity_and_ties_to_lowest_index():
    # Every element represents only itself: each pick gains 1, ties resolved 0, 1, 2, ...
    idx, gains = facility_location(torch.eye(5), 3)
    assert idx.tolist() == [0, 1, 2]
    assert gains.tolist() == [1.0, 1.0, 1.0]
    # All-equal similarities: the first pick covers everything, the rest gain 0.
    idx, gains = facility_location(torch.ones(4, 4), 4)
    assert idx.tolist() == [0, 1, 2, 3]
    assert gains.tolist() == [4.0, 0.0, 0.0, 0.0]


def test_golden_two_clusters():
    # points on a line: {0, 1, 2} and {10, 11}; l1 similarity C = 11
    x = torch.tensor([[0.0], [1.0], [2.0], [10.0], [11.0]])
    sim = pairwise_similarity(x, "l1")
    idx, gains = facility_location(sim, 2)
    # first pick: column sums 11+10+9+1+0=31 (j=0), 10+11+10+2+1=34 (j=1), 9+10+11+3+2=35 (j=2),
    # 1+2+3+11+10=27, 0+1+2+10+11=24 -> j=2 (gain 35); then j=3: gains 11-3 + 10-2 = 16, tie with
    # j=4 (10-3 + 11-2 = 16) -> lowest index 3.
    assert idx.tolist() == [2, 3]
    assert gains.tolist() == [35.0, 16.0]
    assert cluster_weights(sim, idx).tolist() == [3.0, 2.0]


def test_duplicates_give_distinct_indices():
    x = torch.tensor([[1.0, 2.0]] * 3 + [[5.0, 5.0]] * 3)
    sim = pairwise_similarity(x, "l1")
    idx, gains = facility_location(sim, 4)
    assert idx.tolist() == [0, 3, 1, 2]  # after both clusters are covered: lowest unpicked
    assert gains[2:].tolist() == [0.0, 0.0]
    w = cluster_weights(sim, idx)
    # each chosen duplicate represents itself; the unchosen twins 4, 5 join pick 3
    assert w.tolist() == [1.0, 3.0, 1.0, 1.0]
    assert w.sum().item() == 6


def test_budget_zero_and_full():
    sim = random_sim(7, 1)
    idx, gains = facility_location(sim, 0)
    assert idx.shape == (0,) and gains.shape == (0,)
    idx, _ = facility_location(sim, 7)
    assert sorted(idx.tolist()) == list(range(7))


def test_negative_similarity_convention():
    # Current best starts at 0: negative similarities contribute nothing.
    sim = -torch.ones(3, 3)
    idx, gains = facility_location(sim, 2)
    assert idx.tolist() == [0, 1] and gains.tolist() == [0.0, 0.0]
    sim = torch.tensor([[1.0, -0.5], [-0.5, 0.2]])
    idx, gains = facility_location(sim, 2)
    assert idx.tolist() == [0, 1]
    assert gains.tolist() == pytest.approx([1.0, 0.2])
    assert objective(sim.tolist(), [0, 1]) == pytest.approx(1.2)


def test_cluster_weights_ties_go_to_earliest_pick():
    # row 2 is equally similar to picks 1 and 0 (in that pick order): it joins pick 1, the earlier.
    sim = torch.tensor([[5.0, 0.0, 1.0], [0.0, 5.0, 1.0], [2.0, 2.0, 5.0]])
    w = cluster_weights(sim, torch.tensor([1, 0]))
    assert w.tolist() == [2.0, 1.0]
    w = cluster_weights(sim, torch.tensor([0, 1]))
    assert w.tolist() == [2.0, 1.0]
    with pytest.raises(ValueError, match="at least one"):
        cluster_weights(sim, torch.tensor([], dtype=torch.long))


@pytest.mark.parametrize(
    "sim,budget,match",
    [
        (torch.ones(3, 4), 1, "square"),
        (torch.ones(3), 1, "square"),
        (torch.ones(3, 3, dtype=torch.long), 1, "floating"),
        (torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), 1, "NaN or inf"),
        (torch.ones(3, 3), 4, "budget"),
        (torch.ones(3, 3), -1, "budget"),
        (torch.ones(3, 3), True, "budget"),
        (torch.ones(3, 3), 1.5, "budget"),
    ],
)
def test_bad_input(sim, budget, match):
    with pytest.raises(ValueError, match=match):
        facility_location(sim, budget)


def _submodlib_greedy(submodlib, np, sim, budget):
    fl = submodlib.FacilityLocationFunction(
        n=sim.shape[0], mode="dense", sijs=sim.numpy().astype(np.float32), separate_rep=False
    )
    picks = fl.maximize(budget=budget, optimizer="LazyGreedy", stopIfZeroGain=False,
                        stopIfNegativeGain=False, show_progress=False)
    return [int(j) for j, _ in picks], [float(v) for _, v in picks]


@pytest.mark.parametrize("seed", range(3))
def test_same_picks_as_submodlib_lazy_greedy(seed):
    """Random dense kernels (no structural ties): identical picks, gains and objective."""
    submodlib = pytest.importorskip("submodlib")
    np = pytest.importorskip("numpy")
    sim = torch.rand(128, 128, generator=torch.Generator().manual_seed(100 + seed))
    idx, gains = facility_location(sim, 64)
    theirs, their_gains = _submodlib_greedy(submodlib, np, sim, 64)
    assert idx.tolist() == theirs
    assert gains.tolist() == pytest.approx(their_gains, rel=1e-5)
    assert facility_objective(sim.double(), idx).item() == pytest.approx(
        facility_objective(sim.double(), torch.tensor(theirs)).item(), rel=1e-9)


def test_same_objective_as_submodlib_on_l1_kernel():
    """On an l1 kernel near-ties (gains equal to float32 rounding) may be broken differently,
    after which the two greedy paths differ slightly; objectives still agree closely."""
    submodlib = pytest.importorskip("submodlib")
    np = pytest.importorskip("numpy")
    x = torch.randn(128, 64, generator=torch.Generator().manual_seed(7))
    sim = pairwise_similarity(x, "l1")
    idx, _ = facility_location(sim, 64)
    theirs, _ = _submodlib_greedy(submodlib, np, sim, 64)
    ours_value = facility_objective(sim.double(), idx).item()
    theirs_value = facility_objective(sim.double(), torch.tensor(theirs)).item()
    assert ours_value == pytest.approx(theirs_value, rel=1e-4)


def test_batched_greedy_equals_one_by_one():
    from colm.selection.methods.facility_location import greedy_batched

    gen = torch.Generator().manual_seed(5)
    sims = [torch.rand(n, n, generator=gen) for n in (9, 14, 3, 14)]
    budgets = [4, 13, 0, 7]
    batched = greedy_batched(sims, budgets)
    for sim, b, (idx, gains) in zip(sims, budgets, batched):
        ref_idx, ref_gains = facility_location(sim, b)
        assert idx.tolist() == ref_idx.tolist()
        torch.testing.assert_close(gains, ref_gains)
    assert greedy_batched([], []) == []


def test_negative_similarity_convention_matches_submodlib():
    """Mixed-sign kernels: submodlib also starts each row's best at 0 (same picks, same F)."""
    submodlib = pytest.importorskip("submodlib")
    sim = torch.rand(64, 64, generator=torch.Generator().manual_seed(3)) * 2 - 1.5
    idx, gains = facility_location(sim, 20)
    fl = submodlib.FacilityLocationFunction(n=64, mode="dense", sijs=sim.numpy(), separate_rep=False)
    picks = fl.maximize(budget=20, optimizer="NaiveGreedy", stopIfZeroGain=False,
                        stopIfNegativeGain=False, show_progress=False)
    assert idx.tolist() == [int(j) for j, _ in picks]
    assert fl.evaluate(set(idx.tolist())) == pytest.approx(gains.sum().item(), rel=1e-5)
