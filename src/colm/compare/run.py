"""Train one arm x seed from the seed's initialisation and data order, then evaluate it.

`Lab` holds what every arm of a comparison shares (data, how to build a fresh model and the
TrainingArguments); `run_arm` trains and evaluates one arm x seed and returns one result row;
`run_compare` runs every arm x seed not yet in the results file, appending each row as it
finishes, so an interrupted comparison resumes where it stopped.
"""
from __future__ import annotations

import math
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from transformers import TrainerCallback

from colm.compare.arms import Arm
from colm.compare.budget import BudgetError, StepCost, measured_ratio, step_cost, steps_for_budget
from colm.compare.results import ResultsFile  # noqa: F401  (where it lived before)
from colm.config import CoresetConfig

#: Steps of the calibration run that measures a scoring arm's cost ratio (--budget compute).
CALIBRATION_STEPS = 4


@dataclass
class Lab:
    """What every arm x seed of one comparison shares.

    new_model(seed): a fresh model, the same for every arm of a seed.
    training_args(steps, accumulation, seed, output_dir): the run's TrainingArguments for one arm.
    batch: rows per optimizer step before the arm's accumulation (per device x accumulation x world).
    """

    tokenizer: Any
    train: Any
    evald: Any
    new_model: Callable[[int], Any]
    training_args: Callable[[int, int, int, str], Any]
    base_coreset: CoresetConfig
    batch: int
    output_dir: Path
    eval_batch_size: int = 32
    train_rows: dict[str, int] = field(default_factory=dict)
    #: Raw validation rows scored by greedy generation after training (None: no exact match),
    #: with the prompt template and generation length (see `exact_match_rows`).
    exact_match_raw: Any = None
    template: str | None = None
    max_new_tokens: int = 96
    max_prompt_length: int = 512
    #: noise_scale_every / noise_scale_split (the CLI's NoiseScaleArguments): measure the gradient
    #: noise scale (None: off).
    noise_scale: Any = None

    def __post_init__(self) -> None:
        if not self.train_rows:
            self.train_rows = dict(sorted(Counter(map(str, self.train["source"])).items()))


class StepProgress(TrainerCallback):
    """Prints `arm, seed, step` about ten times per run; times itself (harness overhead)."""

    def __init__(self, label: str, steps: int, out: TextIO | None) -> None:
        self.label, self.steps, self.out = label, steps, out
        self.every = max(1, steps // 10)
        self.started = time.perf_counter()
        self.own_s = 0.0

    def on_step_end(self, args, state, control, **kwargs):
        t = time.perf_counter()
        if self.out is not None and (state.global_step % self.every == 0 or state.global_step == self.steps):
            print(f"  [{self.label}] step {state.global_step}/{self.steps}  {t - self.started:.0f} s",
                  file=self.out, flush=True)
        self.own_s += time.perf_counter() - t


def arm_cost(arm: Arm, lab: Lab, seed: int = 0) -> StepCost:
    """Rows one optimizer step of `arm` trains and scores."""
    cfg = arm.coreset_config(lab.base_coreset, seed)
    return step_cost(lab.batch, arm.accumulation, cfg.pool_factor if cfg else None,
                     bool(cfg and cfg.needs_features))


def _sampler(arm: Arm, lab: Lab, seed: int) -> Any:
    if arm.sampler is None:
        return None
    from colm.integrations.reweighted import SourceReweightedSampler, stratified_proportions

    cfg = arm.proportions_config(lab.base_coreset)
    proportions = stratified_proportions(lab.train_rows, cfg.pool_factor, cfg.small_sources)
    return SourceReweightedSampler(list(map(str, lab.train["source"])), proportions, seed=seed)


def run_arm(arm: Arm, seed: int, lab: Lab, steps: int, *, progress: TextIO | None = None,
            evaluate: bool = True, callbacks: Sequence[Any] = (), log_selections: bool = False,
            output_dir: str | None = None) -> dict[str, Any]:
    """Train `arm` for `steps` optimizer steps from seed `seed`'s initialisation; one result row.

    `callbacks` join the trainer's (e.g. periodic evaluations); `log_selections` writes the
    pooled arm's selections.jsonl into `output_dir` (default <lab.output_dir>/arms/<arm>/seed<seed>)."""
    import torch

    from colm.evaluation import mixture_losses, natural_defined, per_source_loss
    from colm.integrations.non_finite import NonFiniteTrainingError
    from colm.training.memory import PeakMemory
    from colm.training.step_timer import StepTimer
    from colm.training.trainer import make_trainer

    t0 = time.perf_counter()
    coreset = arm.coreset_config(lab.base_coreset, seed)
    sampler = _sampler(arm, lab, seed)
    targs = lab.training_args(steps, arm.accumulation, seed,
                              output_dir or str(lab.output_dir / "arms" / arm.name / f"seed{seed}"))
    model = lab.new_model(seed)
    clock = StepTimer()
    ticker = StepProgress(f"{arm.name} seed {seed}", steps, progress)
    trainer = make_trainer(model, lab.tokenizer, lab.train, targs, coreset,
                           callbacks=[clock, ticker, *callbacks], log_selections=log_selections,
                           train_sampler=sampler, noise_scale=lab.noise_scale)
    setup_s = time.perf_counter() - t0
    started = time.perf_counter()
    diverged = None
    with PeakMemory() as mem:
        try:
            trainer.train()
        except NonFiniteTrainingError as err:  # a result of the arm, not a crash of the comparison
            diverged = {"step": err.step, "what": err.what, "message": str(err)}
    wall = time.perf_counter() - started
    row: dict[str, Any] = {"arm": arm.name, "seed": seed, "steps": trainer.state.global_step,
                           "train_loss": trainer.state.log_history[-1].get("train_loss")
                           if trainer.state.log_history else None}
    if diverged is not None:
        row["diverged"] = diverged
    eval_s = 0.0
    if evaluate and diverged is None:
        t1 = time.perf_counter()
        with torch.no_grad():
            val = per_source_loss(model, lab.evald, pad_token_id=lab.tokenizer.pad_token_id,
                                  batch_size=lab.eval_batch_size)
        # No validation source with training rows: the natural mixture is undefined (NaN, said so
        # before training by colm.data.validation_data), the other losses stand.
        natural = (mixture_losses(val["per_source"], lab.train_rows)["natural"]
                   if natural_defined(val["per_source"], lab.train_rows) else float("nan"))
        eval_s = time.perf_counter() - t1
        row.update({
            "val_loss_natural": natural, "val_loss_mean": val["mean"],
            "val_loss_worst": val["worst"], "worst_source": val["worst_source"],
            "per_source": val["per_source"],
        })
        checked = ("val_loss_mean", "val_loss_worst") + (("val_loss_natural",) if natural == natural else ())
        bad = [k for k in checked if not isinstance(row[k], (int, float)) or not math.isfinite(row[k])]
        if bad:  # finite training numbers, but a model that scores NaN: diverged all the same
            row["diverged"] = {"step": row["steps"], "what": f"validation loss ({bad[0]} is {row[bad[0]]})",
                               "message": f"the trained model's {bad[0]} is {row[bad[0]]}"}
        if lab.exact_match_raw is not None:
            t2 = time.perf_counter()
            row["exact_match"] = exact_match(model, lab)
            row["exact_match_s"] = time.perf_counter() - t2
    cost = arm_cost(arm, lab, seed)
    score_s = float(getattr(trainer, "score_seconds", 0.0))
    row.update({
        "gradient_accumulation_steps": targs.gradient_accumulation_steps,
        "train_rows_per_step": cost.train_rows, "scoring_rows_per_step": cost.scoring_rows,
        "score_s": score_s, "step_s": clock.summary()["median_s"], "wall_s": wall, "eval_s": eval_s,
        # Harness overhead: building the arm's trainer, sampler and progress, outside training.
        "harness_s": setup_s + ticker.own_s,
        # CPU: peak RSS growth over the arm's start (see colm.training.memory); CUDA: max allocated growth.
        "peak_mem_mib": mem.peak_bytes / 2**20, "mem_kind": mem.kind, "mem_description": mem.description,
        "coreset": coreset.to_dict() if coreset else None, "sampler": arm.sampler,
    })
    if lab.noise_scale is not None:
        from colm.compare.noise_scale import arm_row_summary

        row["noise_scale"] = arm_row_summary(trainer.noise_scale)
    return row


def exact_match_rows(raw: Any, per_source: int) -> Any:
    """The first `per_source` rows of every source whose reference ends in a numeric answer
    ("The answer is 72"): answers that exact match can score without judging free text."""
    from colm.evaluation import extract_answer

    taken: Counter[str] = Counter()
    keep = []
    for i, (source, response) in enumerate(zip(raw["source"], raw["response"])):
        answer = extract_answer(response).replace(",", "")
        try:
            float(answer)
        except ValueError:
            continue
        if answer and taken[str(source)] < per_source:
            taken[str(source)] += 1
            keep.append(i)
    return raw.select(keep)


def exact_match(model: Any, lab: Lab) -> dict[str, Any]:
    """Greedy-decoding exact match on `lab.exact_match_raw`: per source, mean over sources,
    overall and the number of questions per source (the predictions are not kept)."""
    from colm.data import DEFAULT_TEMPLATE
    from colm.evaluation import generation_exact_match

    got = generation_exact_match(model, lab.tokenizer, lab.exact_match_raw,
                                 template=lab.template or DEFAULT_TEMPLATE, max_new_tokens=lab.max_new_tokens,
                                 max_prompt_length=lab.max_prompt_length, batch_size=16)
    return {k: got[k] for k in ("per_source", "mean", "overall", "n")}


def calibrate_ratio(arm: Arm, lab: Lab, seed: int) -> float:
    """The arm's scoring-row / training-row cost ratio, from a short run of the arm itself
    (0 for an arm without a scoring pass; no run then)."""
    cost = arm_cost(arm, lab, seed)
    if cost.scoring_rows == 0:
        return 0.0
    row = run_arm(arm, seed, lab, CALIBRATION_STEPS, evaluate=False)
    # Per-step means over the calibration run (its first step included: scoring and training alike).
    return measured_ratio(row["wall_s"] / row["steps"], row["score_s"] / row["steps"], cost)


def plan_steps(arms: Sequence[Arm], baseline: Arm, lab: Lab, steps: int, budget: str,
               ratios: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Per arm: steps, cost per step (training-row equivalents), ratio and total compute.

    budget "steps": every arm `steps`; "compute": the baseline `steps`, every other arm the steps
    that fit the baseline's total (colm.compare.budget)."""
    base_cost = arm_cost(baseline, lab)
    base_units = steps * base_cost.units(ratios.get(baseline.name, 0.0))
    plan = {}
    for arm in arms:
        cost, ratio = arm_cost(arm, lab), ratios.get(arm.name, 0.0)
        try:
            n = steps if budget == "steps" or arm.name == baseline.name else steps_for_budget(base_units, cost, ratio)
        except BudgetError as err:
            need = math.ceil(err.per_step / (base_units / steps) - 1e-9)
            raise BudgetError(err.budget_units, err.per_step, (
                f"--budget compute: {arm.name}: {err} ({baseline.name}'s {steps} step(s)); equal compute "
                f"needs --max-steps >= {need}")) from None
        plan[arm.name] = {"steps": n, "train_rows_per_step": cost.train_rows,
                          "scoring_rows_per_step": cost.scoring_rows, "ratio": ratio,
                          "units_per_step": cost.units(ratio), "units": n * cost.units(ratio)}
    return plan


class TimeLeft:
    """An estimate of a comparison's time left: seconds per optimizer step measured over the runs
    finished in this session (setup and evaluation included), times the steps still to run."""

    def __init__(self, plan: dict[str, dict[str, Any]]) -> None:
        self.plan = plan
        self.seconds = 0.0
        self.steps = 0

    def add(self, steps: int, seconds: float) -> None:
        self.seconds += seconds
        self.steps += max(1, steps)

    def words(self, remaining: Sequence[tuple[str, int]], results: ResultsFile) -> str:
        """", about 3 min left" over the (arm, seed) runs not yet done; "" before a run has finished."""
        if not self.steps:
            return ""
        todo = sum(max(1, self.plan[arm]["steps"]) for arm, seed in remaining if not results.done(arm, seed))
        left = self.seconds / self.steps * todo
        return f", about {left / 60:.0f} min left" if left >= 90 else f", about {left:.0f} s left"


def check_budget(arms: Sequence[Arm], baseline: str, lab: Lab, steps: int, budget: str) -> None:
    """Raise BudgetError, before anything trains, when an arm whose cost is known without a
    calibration (no scoring pass, and a baseline without one) cannot get even one step."""
    base = next(a for a in arms if a.name == baseline)
    if budget != "compute" or arm_cost(base, lab).scoring_rows:
        return
    plan_steps([a for a in arms if not arm_cost(a, lab).scoring_rows], base, lab, steps, budget, {})


def run_compare(arms: Sequence[Arm], seeds: Sequence[int], lab: Lab, *, steps: int, budget: str,
                baseline: str, results: ResultsFile, progress: TextIO | None = sys.stderr,
                after_run: Callable[[dict[str, Any]], None] | None = None) -> dict[str, dict[str, Any]]:
    """Run every arm x seed missing from `results`; returns the step plan (see plan_steps)."""
    base = next(a for a in arms if a.name == baseline)
    if budget == "compute":
        for arm in arms:
            if arm.name not in results.ratios and arm_cost(arm, lab).scoring_rows:
                if progress is not None:
                    print(f"  [{arm.name}] calibrating the scoring cost ({CALIBRATION_STEPS} steps)",
                          file=progress, flush=True)
                results.add_ratio(arm.name, calibrate_ratio(arm, lab, seeds[0]))
    plan = plan_steps(arms, base, lab, steps, budget, results.ratios)
    order = [(arm, seed) for seed in seeds for arm in arms]
    eta = TimeLeft(plan)
    for k, (arm, seed) in enumerate(order, start=1):
        if results.done(arm.name, seed):
            continue
        if progress is not None:
            left = eta.words([(a.name, s) for a, s in order[k - 1:]], results)
            print(f"colm compare: run {k} of {len(order)}: {arm.name}, seed {seed}, "
                  f"{plan[arm.name]['steps']} steps{left}", file=progress, flush=True)
        started = time.perf_counter()
        row = run_arm(arm, seed, lab, plan[arm.name]["steps"], progress=progress)
        eta.add(plan[arm.name]["steps"], time.perf_counter() - started)
        row.update(budget=budget, units=plan[arm.name]["units"], ratio=plan[arm.name]["ratio"],
                   date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
        results.add_run(row)
        if after_run is not None:
            after_run(row)
    return plan


def costed_plan(plan: dict[str, dict[str, Any]], runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The plan with every scoring arm's compute counted at a measured cost ratio, never 0.

    Under --budget compute the ratio comes from the calibration run (kept, labelled so); under
    --budget steps no calibration runs, so it is measured from the arm's own runs (scoring
    seconds per row over training seconds per row, mean over seeds)."""
    out = {}
    for name, p in plan.items():
        p = dict(p)
        if p["scoring_rows_per_step"]:
            if p["ratio"] > 0:
                p["ratio_from"] = "calibration run"
            else:
                cost = StepCost(p["train_rows_per_step"], p["scoring_rows_per_step"])
                ratios = []
                for r in runs:
                    if r["arm"] == name and r.get("steps"):
                        try:
                            ratios.append(measured_ratio(r["wall_s"] / r["steps"], r["score_s"] / r["steps"], cost))
                        except ValueError:
                            continue
                if ratios:
                    p["ratio"] = statistics.mean(ratios)
                    p["ratio_from"] = "measured in its runs"
                    p["units_per_step"] = cost.units(p["ratio"])
                    p["units"] = p["steps"] * p["units_per_step"]
        out[name] = p
    return out
