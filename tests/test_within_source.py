"""The within-source methods against brute force and against their sampling definitions."""
import itertools

import pytest
import torch

from colm.selection.methods.cluster_sample import cluster_sample
from colm.selection.methods.mean_match import mean_match
from colm.selection.methods.pps import inclusion_probabilities, pps_sample
from colm.selection.methods.random import random_subset, selection_generator
from colm.selection.similarity import pairwise_similarity


def mean_error(x: torch.Tensor, rows) -> float:
    x = x.double()
    return float((x[list(rows)].mean(0) - x.mean(0)).square().sum())


@pytest.mark.parametrize("seed", range(6))
def test_mean_match_is_a_local_optimum_close_to_brute_force(seed):
    gen = torch.Generator().manual_seed(seed)
    n, b = 11, 4
    x = torch.randn(n, 5, generator=gen) * torch.rand(n, 1, generator=gen) * 3
    picks, error = mean_match(x, b)
    assert picks.numel() == b and picks.unique().numel() == b
    # the reported error is E(S) of the returned set
    assert float(error) == pytest.approx(mean_error(x, picks.tolist()), rel=1e-9, abs=1e-12)
    # no single swap improves it (checked by brute force over all swaps)
    chosen = set(picks.tolist())
    for i, c in itertools.product(chosen, set(range(n)) - chosen):
        assert mean_error(x, (chosen - {i}) | {c}) >= float(error) - 1e-12
    # and it is near the global optimum over all C(11, 4) = 330 subsets
    errors = sorted(mean_error(x, s) for s in itertools.combinations(range(n), b))
    assert float(error) <= errors[len(errors) // 10]  # within the best 10% of all subsets
    assert float(error) < sum(errors) / len(errors) / 3  # far better than a random subset


def test_mean_match_beats_random_subsets_when_features_have_structure():
    # rows = a few shared directions with random coefficients + small noise (gradients of one
    # source look like this): the mean can be matched far better than by chance
    gen = torch.Generator().manual_seed(0)
    basis = torch.randn(3, 40, generator=gen)
    x = torch.randn(24, 3, generator=gen).exp() @ basis + 0.05 * torch.randn(24, 40, generator=gen)
    picks, error = mean_match(x, 8)
    chance = sum(mean_error(x, random_subset(24, 8, selection_generator(0, t, 0)).tolist()) for t in range(200)) / 200
    assert float(error) < 0.05 * chance


def test_mean_match_whole_pool_and_bad_budget():
    x = torch.randn(5, 3)
    picks, error = mean_match(x, 5)
    assert sorted(picks.tolist()) == list(range(5)) and float(error) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="budget"):
        mean_match(x, 0)


def test_random_subset_is_uniform_and_seeded():
    n, b, trials = 7, 3, 7000
    counts = torch.zeros(n)
    for step in range(trials):
        picks = random_subset(n, b, selection_generator(0, step, 2))
        assert picks.unique().numel() == b
        counts[picks] += 1
    # each row is taken with probability b/n = 3/7 -> 3000 of 7000; 5 sd ~ 5 * 41
    assert torch.all((counts - trials * b / n).abs() < 5 * (trials * (b / n) * (1 - b / n)) ** 0.5)
    a = random_subset(n, b, selection_generator(1, 5, 2))
    assert torch.equal(a, random_subset(n, b, selection_generator(1, 5, 2)))  # same seed, same picks


def test_cluster_sample_draws_each_cluster_in_proportion_to_its_size():
    from colm.selection.budget import split_budget
    from colm.selection.methods.facility_location import cluster_weights, facility_location

    gen = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(9, 2, generator=gen) * 0.1, 100 + torch.randn(5, 2, generator=gen)])
    sim = pairwise_similarity(x, "l1")
    b = 4
    medoids, _ = facility_location(sim, b)
    owner = torch.argmax(sim[:, medoids], dim=1)
    owner[medoids] = torch.arange(b)
    shares = split_budget(b, cluster_weights(sim, medoids).long().tolist())
    seen = set()
    for step in range(60):
        picks = cluster_sample(sim, b, selection_generator(0, step, 0))
        assert picks.numel() == b and picks.unique().numel() == b
        per_cluster = torch.bincount(owner[picks], minlength=b).tolist()
        assert per_cluster == shares
        seen.update(picks.tolist())
    # members other than the medoids are drawn too: it is a sample, not the medoids
    assert len(seen - set(medoids.tolist())) >= 6


def test_inclusion_probabilities_sum_to_budget_and_cap_at_one():
    size = torch.tensor([10.0, 1.0, 1.0, 1.0, 1.0, 0.0])
    pi = inclusion_probabilities(size, 3)
    assert float(pi.sum()) == pytest.approx(3.0)
    assert float(pi[0]) == 1.0  # 3 * 10/14 > 1: taken with certainty
    assert torch.allclose(pi[1:5], torch.full((4,), 2.0 / 4.0, dtype=torch.float64), atol=1e-6)
    assert 0 < float(pi[5]) < 1e-5  # size 0 still has a (tiny) chance, so weights stay finite


def test_pps_sample_hits_its_inclusion_probabilities_and_is_unbiased():
    gen = torch.Generator().manual_seed(3)
    n, b, trials = 8, 3, 6000
    size = torch.rand(n, generator=gen) + 0.2
    values = torch.randn(n, generator=gen, dtype=torch.float64)
    pi = inclusion_probabilities(size, b)
    counts = torch.zeros(n, dtype=torch.float64)
    estimates = []
    for step in range(trials):
        picks, weights = pps_sample(size, b, selection_generator(0, step, 0))
        assert picks.unique().numel() == b
        counts[picks] += 1
        estimates.append(float((values[picks] * weights.double()).sum()))
    sd = (trials * pi * (1 - pi)).sqrt()
    assert torch.all((counts - trials * pi).abs() <= 5 * sd + 1)
    # Horvitz-Thompson: the weighted sum estimates the total without bias
    est = torch.tensor(estimates)
    assert abs(float(est.mean()) - float(values.sum())) < 5 * float(est.std()) / trials**0.5


def test_balanced_sample_is_uniform_and_balances_the_leading_components():
    from colm.selection.methods.balanced import balanced_sample, principal_scores

    gen = torch.Generator().manual_seed(5)
    n, b, trials = 25, 9, 1500
    # rows spread mostly along two directions (as per-example gradients of one source are)
    x = torch.randn(n, 2, generator=gen) @ torch.randn(2, 30, generator=gen) * 3 + 0.1 * torch.randn(n, 30, generator=gen)
    counts = torch.zeros(n)
    balanced_err, random_err = [], []
    scores = principal_scores(x, 2)
    for t in range(trials):
        picks = balanced_sample(x, b, selection_generator(0, t, 0), components=2)
        assert picks.numel() == b and picks.unique().numel() == b
        counts[picks] += 1
        balanced_err.append(float((scores[picks].mean(0) - scores.mean(0)).norm()))
        rnd = random_subset(n, b, selection_generator(1, t, 0))
        random_err.append(float((scores[rnd].mean(0) - scores.mean(0)).norm()))
    # unbiased: every row drawn with probability b / n (5 sd of a binomial)
    sd = (trials * (b / n) * (1 - b / n)) ** 0.5
    assert torch.all((counts - trials * b / n).abs() < 5 * sd), counts
    # and the picks' mean follows the pool's along the leading components far better than chance
    assert sum(balanced_err) < 0.5 * sum(random_err)


def test_balanced_sample_edge_cases():
    from colm.selection.methods.balanced import balanced_sample

    x = torch.randn(6, 4)
    assert balanced_sample(x, 6, selection_generator(0, 0, 0)).tolist() == list(range(6))
    assert balanced_sample(x, 1, selection_generator(0, 0, 0)).numel() == 1
    same = torch.ones(7, 3)  # no spread: only the size equation is left
    assert balanced_sample(same, 3, selection_generator(0, 1, 0)).numel() == 3
    with pytest.raises(ValueError, match="budget"):
        balanced_sample(x, 7, selection_generator(0, 0, 0))


def test_balanced_step_direction_depends_on_the_equations_only():
    # The cube method's step direction must not depend on which basis of the null space the
    # LAPACK kernel returns (it differed between two CPUs of the same machine kind and changed
    # the picks): any basis of the same balancing equations, i.e. a @ r for an invertible r,
    # gives the same direction, and the direction solves the equations.
    from colm.selection.methods.balanced import _null_direction

    g = torch.Generator().manual_seed(3)
    for m, p in ((12, 5), (9, 1), (30, 8)):
        a = torch.randn(m, p, generator=g, dtype=torch.float64)
        r = torch.randn(p, p, generator=g, dtype=torch.float64) + 3 * torch.eye(p, dtype=torch.float64)
        u, u_other_basis = _null_direction(a), _null_direction(a @ r)
        assert u is not None and u_other_basis is not None
        assert torch.allclose(a.T @ u, torch.zeros(p, dtype=torch.float64), atol=1e-10)
        assert torch.allclose(u, u_other_basis, atol=1e-9), (m, p)
        assert abs(float(u.norm()) - 1) < 1e-12
    assert _null_direction(torch.randn(4, 6, generator=g, dtype=torch.float64)) is None  # m <= rank
