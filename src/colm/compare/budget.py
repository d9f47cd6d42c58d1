"""Compute accounting: how many optimizer steps each arm gets under `--budget compute`.

Compute is counted in *training-row equivalents*. An optimizer step of an arm costs

    train_rows + ratio x scoring_rows

where train_rows = b x accumulation (rows that go through forward and backward), scoring_rows =
the pool rows scored without gradients (pool_factor x train_rows when the selection looks at
gradient features, 0 for plain, accumulation, re-weighted and stratified arms), and ratio = the
measured wall time of scoring one row over that of training one row (`measured_ratio`, from a
short calibration run of the arm itself). Collating a pool and choosing rows at random are not
counted: they cost no model pass. Every arm then gets the whole number of steps whose compute
fits the baseline run's (`steps_for_budget`), so no arm exceeds the baseline's compute.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class StepCost:
    """Rows one optimizer step puts through the model: with gradients, and scored without."""

    train_rows: int
    scoring_rows: int = 0

    def units(self, ratio: float) -> float:
        """Training-row equivalents of the step, a scoring row costing `ratio` training rows."""
        if self.scoring_rows and not (math.isfinite(ratio) and ratio >= 0):
            raise ValueError(f"a scoring-pass arm needs a measured cost ratio >= 0, got {ratio}")
        return self.train_rows + (ratio * self.scoring_rows if self.scoring_rows else 0.0)


def step_cost(batch: int, accumulation: int, pool_factor: int | None, scores: bool) -> StepCost:
    """The cost of one step of b=`batch` x `accumulation` rows (x world size, folded into batch);
    `pool_factor` None = no pool; `scores`: whether the pool is scored (selection needs features)."""
    train = batch * accumulation
    return StepCost(train, pool_factor * train if (pool_factor and pool_factor > 1 and scores) else 0)


def measured_ratio(step_s: float, score_s: float, cost: StepCost) -> float:
    """Scoring time per row over training time per row, from one step's wall time `step_s` of
    which `score_s` was the scoring pass (the rest trains `cost.train_rows` rows)."""
    if cost.scoring_rows == 0:
        return 0.0
    train_s = step_s - score_s
    if not (score_s >= 0 and train_s > 0):
        raise ValueError(f"cannot measure a cost ratio from a {step_s} s step with {score_s} s of scoring")
    return (score_s / cost.scoring_rows) / (train_s / cost.train_rows)


class BudgetError(ValueError):
    """An arm whose single step costs more than the whole budget: equal compute is impossible."""

    def __init__(self, budget_units: float, per_step: float, message: str | None = None) -> None:
        self.budget_units, self.per_step = budget_units, per_step
        super().__init__(message or f"one step costs {per_step:.0f} training-row equivalents, more than "
                         f"the whole budget of {budget_units:.0f}")


def steps_for_budget(budget_units: float, cost: StepCost, ratio: float) -> int:
    """The most whole steps of `cost` that fit `budget_units`. Raises BudgetError when not one
    step fits: giving it one anyway would spend more than the budget and call it equal."""
    per_step = cost.units(ratio)
    # A tiny tolerance: 100 x 16 rows must buy exactly 50 steps of 32, not 49 by rounding.
    steps = math.floor(budget_units / per_step + 1e-9)
    if steps < 1:
        raise BudgetError(budget_units, per_step)
    return steps
