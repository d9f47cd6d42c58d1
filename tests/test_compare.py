"""colm compare's library: the natural-mixture loss, the arm presets, the compute accounting, the
paired statistics and the re-weighting control's sampler (its source mix is the stratified
coreset's in expectation)."""
from __future__ import annotations

import math
from collections import Counter
from types import SimpleNamespace

import pytest
import torch

from colm.compare.arms import PAPER, ArmError, parse_arm, parse_arms
from colm.compare.budget import BudgetError, StepCost, measured_ratio, step_cost, steps_for_budget
from colm.compare.run import plan_steps
from colm.compare.stats import IntervalError, fraction_of_gap, paired_difference, t_quantile
from colm.config import CoresetConfig
from colm.evaluation import mixture_losses
from colm.integrations.reweighted import SourceReweightedSampler, stratified_proportions
from colm.selection.selector import CoresetSelector

# ------------------------------------------------------------------ the natural-mixture loss


def test_mixture_losses_match_a_hand_computation():
    per_source = {"a": 2.0, "b": 4.0, "c": 1.0}
    rows = {"a": 6, "b": 3, "c": 1}
    got = mixture_losses(per_source, rows)
    # natural: (6 * 2 + 3 * 4 + 1 * 1) / 10 = 2.5; mean: 7 / 3; worst: b at 4
    assert got["natural"] == pytest.approx(2.5)
    assert got["mean"] == pytest.approx(7 / 3)
    assert (got["worst"], got["worst_source"]) == (4.0, "b")
    assert got["weights"] == pytest.approx({"a": 0.6, "b": 0.3, "c": 0.1})
    assert got["natural_coverage"] == 1.0


def test_mixture_losses_renormalize_over_evaluated_sources_and_say_how_much_is_covered():
    got = mixture_losses({"a": 2.0, "b": 4.0}, {"a": 1, "b": 1, "unseen": 2})
    assert got["natural"] == pytest.approx(3.0)
    assert got["natural_coverage"] == pytest.approx(0.5)
    # A validation-only source weighs 0 in the natural mixture but counts in the mean.
    got = mixture_losses({"a": 2.0, "val_only": 10.0}, {"a": 5})
    assert got["natural"] == pytest.approx(2.0) and got["mean"] == pytest.approx(6.0)
    with pytest.raises(ValueError, match="no evaluated source"):
        mixture_losses({"x": 1.0}, {"a": 3})


# ------------------------------------------------------------------ presets


def test_presets_build_the_configs_they_name():
    arms = {a.name: a for a in parse_arms("plain,accumulate2,accumulate4,reweighted,stratified,paper,mean_match")}
    base = CoresetConfig(pool_factor=2)
    assert arms["plain"].coreset_config(base, 0) is None and arms["plain"].accumulation == 1
    assert arms["accumulate2"].accumulation == 2 and arms["accumulate4"].accumulation == 4
    assert arms["reweighted"].coreset_config(base, 0) is None and arms["reweighted"].sampler == "reweighted"
    strat = arms["stratified"].coreset_config(base, 7)
    assert strat.within_source == "random" and not strat.needs_features and strat.selection_seed == 7
    paper = arms["paper"].coreset_config(base, 0)
    assert (paper.within_source, paper.feature, paper.zo_probes) == (PAPER["within_source"], "zo", 1)
    mm = arms["mean_match"].coreset_config(base, 0)
    assert (mm.within_source, mm.feature, mm.adam_second_moment) == ("mean_match", "exact", "pool")


def test_arm_overrides_apply_on_the_preset_and_on_stratified_without_one():
    arm = parse_arm("paper:zo_probes=4:small_sources=none")
    cfg = arm.coreset_config(CoresetConfig(), 3)
    assert (cfg.within_source, cfg.zo_probes, cfg.small_sources) == ("facility_location", 4, "none")
    bare = parse_arm("within_source=mean_match:feature=exact")
    assert bare.name == "within_source=mean_match:feature=exact"
    assert bare.coreset_config(CoresetConfig(), 0).within_source == "mean_match"
    assert parse_arm("reweighted:pool_factor=4").proportions_config(CoresetConfig()).pool_factor == 4


@pytest.mark.parametrize("spec, needle", [
    ("bogus", "unknown arm 'bogus'; presets: plain, accumulate2"),
    ("plain:pool_factor=2", "trains without a pool"),
    ("stratified:nonsense=1", "not KEY=VALUE with a CoresetConfig field"),
    ("stratified:pool_factor=0", "pool_factor"),
    ("plain,plain", "listed twice"),
])
def test_bad_arms_are_named(spec, needle):
    with pytest.raises(ArmError, match=None) as err:
        parse_arms(spec)
    assert needle in str(err.value)


# ------------------------------------------------------------------ compute accounting


def test_step_cost_counts_training_and_scoring_rows():
    assert step_cost(16, 1, None, False) == StepCost(16, 0)  # plain
    assert step_cost(16, 2, None, False) == StepCost(32, 0)  # accumulate2
    assert step_cost(16, 1, 2, False) == StepCost(16, 0)  # stratified: a pool, no scoring pass
    assert step_cost(16, 1, 2, True) == StepCost(16, 32)  # paper: scores 2b rows, trains b
    assert StepCost(16, 32).units(0.25) == pytest.approx(24.0)
    with pytest.raises(ValueError, match="measured cost ratio"):
        StepCost(16, 32).units(math.nan)


def test_measured_ratio_is_time_per_scoring_row_over_time_per_training_row():
    # 1.0 s step, 0.4 s of it scoring 32 rows, 0.6 s training 16: (0.4/32) / (0.6/16) = 1/3
    assert measured_ratio(1.0, 0.4, StepCost(16, 32)) == pytest.approx(1 / 3)
    assert measured_ratio(1.0, 0.0, StepCost(16, 0)) == 0.0
    with pytest.raises(ValueError):
        measured_ratio(1.0, 1.0, StepCost(16, 32))


def test_equal_compute_gives_each_arm_the_steps_that_fit_the_baseline():
    assert steps_for_budget(100 * 16, StepCost(32), 0) == 50
    assert steps_for_budget(100 * 16, StepCost(16, 32), 0.5) == 50  # 16 + 0.5 x 32 = 32 per step
    assert steps_for_budget(100 * 16, StepCost(16, 32), 0.3) == 62  # 1600 / 25.6 = 62.5: whole steps
    with pytest.raises(BudgetError, match="more than the whole budget"):  # never a silent excess
        steps_for_budget(10, StepCost(64), 0)


def test_plan_steps_under_both_budgets():
    lab = SimpleNamespace(base_coreset=CoresetConfig(pool_factor=2), batch=16)
    arms = parse_arms("plain,accumulate2,reweighted,stratified,paper")
    ratios = {"paper": 0.5}
    compute = plan_steps(arms, arms[3], lab, 100, "compute", ratios)
    assert {k: v["steps"] for k, v in compute.items()} == {
        "plain": 100, "accumulate2": 50, "reweighted": 100, "stratified": 100, "paper": 50}
    assert compute["paper"]["units"] == pytest.approx(50 * (16 + 0.5 * 32))
    assert all(v["units"] <= compute["stratified"]["units"] for v in compute.values())
    # The baseline may be the larger batch: every b-row arm then gets twice its steps.
    by_acc = plan_steps(arms, arms[1], lab, 100, "compute", ratios)
    assert by_acc["plain"]["steps"] == 200 and by_acc["accumulate2"]["steps"] == 100
    steps = plan_steps(arms, arms[3], lab, 100, "steps", ratios)
    assert {v["steps"] for v in steps.values()} == {100}


# ------------------------------------------------------------------ statistics


def test_t_quantiles_match_the_tables():
    # Student-t 97.5% points (any statistics table)
    for df, q in ((1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (29, 2.0452)):
        assert t_quantile(0.975, df) == pytest.approx(q, abs=2e-4)


def test_paired_difference_by_hand_and_the_one_seed_error():
    d = paired_difference({0: 2.0, 1: 4.0, 2: 6.0, 9: 1.0}, {0: 1.0, 1: 2.0, 2: 3.0})  # seed 9 unpaired
    # diffs 1, 2, 3: mean 2, sd 1, half width t(0.975, 2) / sqrt(3)
    assert (d.mean, d.sd, d.n) == (2.0, 1.0, 3)
    assert d.hi - d.mean == pytest.approx(4.3027 / math.sqrt(3), abs=1e-3)
    with pytest.raises(IntervalError, match="the interval needs >= 2 seeds"):
        paired_difference({0: 1.0}, {0: 2.0})
    assert fraction_of_gap(3.5, 4.0, 3.0) == pytest.approx(0.5)


# ------------------------------------------------------------------ the re-weighting control


SIZES = {"big": 800, "mid": 150, "small": 50}


def test_stratified_proportions_by_hand():
    # mean size 333: mid and small are small sources, kept whole at their pool share x pool_factor
    p = stratified_proportions(SIZES, 2)
    assert p == pytest.approx({"big": 1 - 2 * 0.2, "mid": 2 * 0.15, "small": 2 * 0.05})
    assert stratified_proportions(SIZES, 2, "none") == pytest.approx({"big": 0.8, "mid": 0.15, "small": 0.05})
    assert stratified_proportions(SIZES, 1) == pytest.approx({"big": 0.8, "mid": 0.15, "small": 0.05})


def test_stratified_proportions_are_the_selectors_shares_in_expectation():
    """The claim behind the control: the mix it draws is the one colm's default selection trains."""
    sources = [s for s, n in SIZES.items() for _ in range(n)]
    selector = CoresetSelector(CoresetConfig(pool_factor=2, within_source="random"), dict(SIZES))
    gen = torch.Generator().manual_seed(0)
    picked: Counter = Counter()
    steps, b = 600, 16
    for _ in range(steps):
        pool = torch.randperm(len(sources), generator=gen)[: 2 * b].tolist()
        pool_sources = [sources[i] for i in pool]
        sel = selector.select(None, pool_sources, b)
        picked.update(pool_sources[i] for i in sel.indices.tolist())
    shares = {s: picked[s] / (steps * b) for s in SIZES}
    assert shares == pytest.approx(stratified_proportions(SIZES, 2), abs=0.015)


def test_reweighted_sampler_draws_the_proportions_without_repeats_within_a_source():
    sources = [s for s, n in SIZES.items() for _ in range(n)]
    p = stratified_proportions(SIZES, 2)
    sampler = SourceReweightedSampler(sources, p, seed=3)
    first = list(sampler)
    assert len(first) == len(sources) == len(sampler)
    counts = Counter(sources[i] for i in first)
    for s in SIZES:
        assert counts[s] / len(first) == pytest.approx(p[s], abs=0.04)
    # big (800 rows) is drawn about 400 times in a pass: no row twice before all were drawn once
    big = [i for i in first if sources[i] == "big"]
    assert len(set(big)) == len(big)
    # small (50 rows, ~100 draws): every row once before any row a third time
    small = Counter(i for i in first if sources[i] == "small")
    assert max(small.values()) - min(small.values()) <= 1 and len(small) == 50
    second = list(sampler)
    assert second != first  # a fresh draw each pass
    again = SourceReweightedSampler(sources, p, seed=3)
    assert list(again) == first  # seeded
    again.set_epoch(1)
    assert list(again) == second


def test_reweighted_sampler_refuses_unknown_sources_and_bad_weights():
    with pytest.raises(ValueError, match="does not have"):
        SourceReweightedSampler(["a", "b"], {"a": 0.5, "z": 0.5})
    with pytest.raises(ValueError, match="positive sum"):
        SourceReweightedSampler(["a", "b"], {"a": 0.0, "b": 0.0})


def test_coreset_trainer_trains_on_the_rows_the_sampler_draws(tmp_path):
    from trainer_helpers import collator, mixture, tiny_llama, training_args

    from colm import CoresetTrainer

    data = mixture({"big": 40, "small": 8})
    proportions = stratified_proportions({"big": 40, "small": 8}, 2)
    seen: list[list[int]] = []

    class Recording(CoresetTrainer):
        def compute_loss(self, model, inputs, *a, **k):
            for ids, mask in zip(inputs["input_ids"].tolist(), inputs["attention_mask"].tolist()):
                seen.append([t for t, m in zip(ids, mask) if m])
            return super().compute_loss(model, inputs, *a, **k)

    sampler = SourceReweightedSampler(data["source"], proportions, seed=5)
    trainer = Recording(model=tiny_llama(), args=training_args(tmp_path, max_steps=3), train_dataset=data,
                        data_collator=collator(), train_sampler=sampler)
    trainer.train()
    expected = list(SourceReweightedSampler(data["source"], proportions, seed=5))[: len(seen)]
    assert len(seen) == 3 * 8
    assert seen == [data[i]["input_ids"] for i in expected]
