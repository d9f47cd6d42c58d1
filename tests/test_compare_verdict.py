"""The compare report's verdict, per-source table and compute, from a fixture of results rows."""
from __future__ import annotations

import math

from colm.compare.report import per_source_table, summarize_arms
from colm.compare.run import costed_plan
from colm.compare.verdict import verdict

TRAIN_ROWS = {"big": 90, "tiny": 10}
STRATIFIED = {"pool_factor": 2, "small_sources": "below_mean"}


def row(arm: str, seed: int, natural: float, mean: float, worst: float, *, steps: int = 10, step_s: float = 0.1,
        mem: float = 100.0, coreset=None, score_s: float = 0.0) -> dict:
    return {"arm": arm, "seed": seed, "steps": steps, "val_loss_natural": natural, "val_loss_mean": mean,
            "val_loss_worst": worst, "per_source": {"big": natural, "tiny": worst}, "step_s": step_s,
            "wall_s": step_s * steps, "score_s": score_s, "peak_mem_mib": mem, "mem_kind": "cpu", "coreset": coreset}


def fixture_runs() -> list[dict]:
    runs = []
    for seed, noise in enumerate((0.0, 0.01, -0.01)):
        runs.append(row("stratified", seed, 2.00 + noise, 2.10 + noise, 2.30 + noise, coreset=STRATIFIED))
        # plain: clearly worse on the natural mixture (every seed +0.2), noise on the worst source
        runs.append(row("plain", seed, 2.20 + noise, 2.30 + noise, 2.30 + noise + (0.05, -0.05, 0.0)[seed],
                        step_s=0.05, mem=60.0))
    return runs


PLAN = {"stratified": {"steps": 10, "train_rows_per_step": 8, "scoring_rows_per_step": 0, "ratio": 0.0,
                       "units_per_step": 8.0, "units": 80.0},
        "plain": {"steps": 10, "train_rows_per_step": 8, "scoring_rows_per_step": 0, "ratio": 0.0,
                  "units_per_step": 8.0, "units": 80.0}}


def test_the_verdict_says_who_is_better_beyond_the_interval_at_what_cost_and_what_is_noise():
    arms = summarize_arms(fixture_runs(), "stratified")
    text = "\n".join(verdict(arms, "stratified", PLAN, intervals=True, budget="steps"))
    assert text.startswith("## Verdict")
    answer = text.split("\n\n")[1]
    assert "**plain** is worse on the natural-mixture loss, mean loss over sources than stratified" in answer
    assert "10 steps vs 10, compute 1.00x, time per step 0.50x, peak memory 0.60x" in answer
    natural = next(line for line in text.splitlines() if line.startswith("- **natural-mixture loss**"))
    assert "plain is worse than stratified by 0.200 (+0.200 [" in natural
    worst = next(line for line in text.splitlines() if line.startswith("- **worst-source loss**"))
    assert "within seed noise: plain (" in worst


def test_a_verdict_without_differences_says_noise_and_without_intervals_says_why():
    runs = [row(arm, s, 2.0 + 0.01 * s + (0.001 if arm == "plain" and s % 2 else 0.0), 2.1, 2.3)
            for s in range(3) for arm in ("stratified", "plain")]
    arms = summarize_arms(runs, "stratified")
    text = "\n".join(verdict(arms, "stratified", PLAN, intervals=True, budget="steps"))
    assert "No arm differs from **stratified** beyond seed noise on any loss (3 seeds" in text
    means = verdict(summarize_arms(runs, "stratified", intervals=False), "stratified", PLAN, intervals=False,
                    budget="steps")
    assert "no difference to stratified can be told from seed noise" in "\n".join(means)


def test_an_undefined_natural_loss_is_said_not_a_crash():
    runs = [row(arm, s, math.nan, 2.1 + 0.01 * s, 2.3) for s in range(2) for arm in ("stratified", "plain")]
    arms = summarize_arms(runs, "stratified")
    text = "\n".join(verdict(arms, "stratified", PLAN, intervals=True, budget="steps"))
    assert "natural-mixture loss**: undefined" in text


def test_the_per_source_table_marks_the_sources_kept_whole():
    table = per_source_table(fixture_runs(), TRAIN_ROWS)
    assert "| tiny * | 10 |" in table and table.splitlines()[-1].endswith("| stratified |")
    assert "| big | 90 |" in table


def test_a_scoring_arm_under_the_steps_budget_is_costed_at_a_measured_ratio_not_zero():
    plan = {"paper": {"steps": 10, "train_rows_per_step": 8, "scoring_rows_per_step": 16, "ratio": 0.0,
                      "units_per_step": 8.0, "units": 80.0}}
    # 0.1 s steps of which 0.02 s scoring 16 rows, 0.08 s training 8: ratio (0.02/16)/(0.08/8) = 0.125
    runs = [row("paper", s, 2.0, 2.1, 2.3, step_s=0.1, score_s=0.2) for s in range(2)]
    got = costed_plan(plan, runs)["paper"]
    assert math.isclose(got["ratio"], 0.125) and got["ratio_from"] == "measured in its runs"
    assert math.isclose(got["units"], 10 * (8 + 0.125 * 16))
