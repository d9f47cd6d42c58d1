"""Small-source rule, per-source budget split and the overflow rule."""
import random

import pytest
import torch

from colm.selection.budget import overflow_keep, small_sources, split_budget


def test_below_mean_golden():
    sizes = {"a": 100, "b": 50, "c": 10, "d": 40}  # mean 50: "b" is not below it
    assert small_sources("below_mean", sizes) == {"c", "d"}
    assert small_sources("below_mean", {"x": 5, "y": 5}) == frozenset()  # equal sizes: none small
    assert small_sources("none", sizes) == frozenset()


def test_explicit_list_and_int_keys():
    assert small_sources(["b", "c"], {"a": 1, "b": 2, "c": 3}) == {"b", "c"}
    # integer source ids may be listed as strings (e.g. from a JSON config)
    assert small_sources(["1"], {0: 10, 1: 20}) == {1}
    assert small_sources([], {"a": 1}) == frozenset()


def test_unknown_names_and_rules():
    with pytest.raises(ValueError, match=r"unknown source\(s\) \['zz'\]"):
        small_sources(["a", "zz"], {"a": 1, "b": 2})
    with pytest.raises(ValueError, match="rule"):
        small_sources("smallest", {"a": 1})


def test_split_golden():
    assert split_budget(10, [5, 3, 2]) == [5, 3, 2]
    # quotas 3.5, 2.1, 1.4 -> floors 3, 2, 1, one leftover to the largest remainder (source 0)
    assert split_budget(7, [5, 3, 2]) == [4, 2, 1]
    # equal remainders: the earlier source first
    assert split_budget(1, [1, 1]) == [1, 0]
    assert split_budget(3, [2, 2, 2, 2]) == [1, 1, 1, 0]
    assert split_budget(0, [4, 4]) == [0, 0]
    assert split_budget(0, []) == []


def test_split_properties_random():
    rng = random.Random(0)
    for _ in range(500):
        counts = [rng.randint(0, 40) for _ in range(rng.randint(1, 6))]
        total = sum(counts)
        budget = rng.randint(0, total)
        shares = split_budget(budget, counts)
        assert sum(shares) == budget
        for s, c in zip(shares, counts):
            assert 0 <= s <= c
            if total:
                quota = budget * c / total
                assert quota - 1 < s < quota + 1


@pytest.mark.parametrize("budget,counts", [(5, [2, 2]), (-1, [3]), (1.5, [3]), (True, [3])])
def test_split_bad_budget(budget, counts):
    with pytest.raises(ValueError, match="budget"):
        split_budget(budget, counts)


def test_split_negative_count():
    with pytest.raises(ValueError, match="counts"):
        split_budget(1, [2, -1])


def test_overflow_round_robin_rarest_first():
    groups = [(10, torch.tensor([0, 1, 2])), (5, torch.tensor([3, 4])), (7, torch.tensor([6, 8]))]
    # rarity order: size 5 (3, 4), size 7 (6, 8), size 10 (0, 1, 2); round 0: 3, 6, 0; round 1: 4, 8, 1
    assert overflow_keep(1, groups).tolist() == [3]
    assert overflow_keep(2, groups).tolist() == [3, 6]
    assert overflow_keep(4, groups).tolist() == [0, 3, 4, 6]
    assert overflow_keep(6, groups).tolist() == [0, 1, 3, 4, 6, 8]
    assert overflow_keep(100, groups).tolist() == [0, 1, 2, 3, 4, 6, 8]
    assert overflow_keep(0, groups).tolist() == []
    assert overflow_keep(3, []).tolist() == []


def test_overflow_ties_in_size_keep_group_order():
    groups = [(5, torch.tensor([7])), (5, torch.tensor([2]))]
    assert overflow_keep(1, groups).tolist() == [7]
    with pytest.raises(ValueError):
        overflow_keep(-1, groups)
