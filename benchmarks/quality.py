"""Quality at equal optimizer steps: the stratified control, CoLM, the candidates, ablations.

Every arm trains the embedded default model from the same initialisation (per seed) on the
shipped math mixture for the same number of optimizer steps, then reports per-source validation
loss on a fixed validation subset, time per step and peak memory growth of the process. Arms:

  random_b            plain training, batch b
  random_2b           batch 2b (gradient accumulation 2 x b)
  random_4b           batch 4b (gradient accumulation 4 x b)
  stratified_b_of_2b  the control: pool 2b, small sources kept whole, every large source's share
                      filled uniformly at random (within_source="random"; no features, no scoring)
  colm_b_of_2b        the paper's selection: pool 2b, facility location on zo (m = 1) features
  candidates (pool 2b, coreset b, exact features, one within-source method each):
                      fl_exact, mean_match_exact, mean_match_pool (adam_second_moment="pool"),
                      cluster_sample_exact, pps_exact, balanced_exact
  ablations (colm_b_of_2b with one change): no_small_sources, no_adam, no_sparsify,
                      zo_fixed_z (m=1, one z for the run: the reference code), exact, weighted

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 .venv/bin/python benchmarks/quality.py --arms main,candidates \
        --seeds 0,1,2,3,4 --out benchmarks/results/quality_runs.json --summary benchmarks/results/quality.json

  controls:           reweighted (no pool: a plain batch of b drawn with the stratified coreset's
                      expected source mix; colm.integrations.reweighted)

Every arm runs through colm compare's harness (colm.compare.run.run_arm), the same code
`colm compare` runs. `--budget compute` gives --baseline --steps and every other arm the steps
that fit its compute (colm.compare.budget; arms with a scoring pass are refused here, since
their cost ratio needs `colm compare`'s calibration run).

Results are appended arm by arm to the output JSON (re-running skips arms already there), so a
long run can be interrupted and resumed. Rows carry the natural-mixture loss
(val_loss_natural: per-source loss weighted by the training rows' source shares, recorded in
settings.train_rows), the mean over sources and the worst source; rows of older files get the
natural loss recomputed from their per-source losses. The table gives mean +- sd over seeds
and, per seed, the paired difference of every arm minus --baseline with a 95% t interval, on
all three; --summary files gain a "val_loss_natural" list per arm.
"""
from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from transformers import TrainingArguments
from transformers.utils import logging as hf_logging

from colm import CoresetConfig
from colm.compare.arms import PRESETS, Arm
from colm.compare.report import loss_table
from colm.compare.run import Lab, plan_steps, run_arm
from colm.data import default_mixture_dir, load_mixture, tokenize_mixture
from colm.evaluation import mixture_losses
from colm.models.default import default_model, default_tokenizer

#: The paper's selection as colm implements it (the default CoresetConfig may change).
PAPER = {"within_source": "facility_location", "feature": "zo", "zo_probes": 1}
MAIN_ARMS: dict[str, tuple[int, dict[str, Any] | None]] = {
    # name: (gradient_accumulation_steps, CoresetConfig overrides or None for plain training)
    "random_b": (1, None),
    "random_2b": (2, None),
    "random_4b": (4, None),
    "stratified_b_of_2b": (1, {"within_source": "random"}),
    "colm_b_of_2b": (1, PAPER),
}
CANDIDATES: dict[str, tuple[int, dict[str, Any] | None]] = {
    "fl_exact": (1, {"within_source": "facility_location", "feature": "exact"}),
    "mean_match_exact": (1, {"within_source": "mean_match", "feature": "exact"}),
    "mean_match_pool": (1, {"within_source": "mean_match", "feature": "exact", "adam_second_moment": "pool"}),
    "cluster_sample_exact": (1, {"within_source": "cluster_sample", "feature": "exact"}),
    "pps_exact": (1, {"within_source": "pps", "feature": "exact"}),
    "balanced_exact": (1, {"within_source": "balanced", "feature": "exact"}),
}
ABLATIONS: dict[str, tuple[int, dict[str, Any] | None]] = {
    "no_small_sources": (1, {**PAPER, "small_sources": "none"}),
    "no_adam": (1, {**PAPER, "adam_normalize": False}),
    "no_sparsify": (1, {**PAPER, "topk_dims": None}),
    "zo_fixed_z": (1, {**PAPER, "zo_fixed_z": True}),
    "exact": (1, {**PAPER, "feature": "exact"}),
    "weighted": (1, {**PAPER, "weighted": True}),
}
#: Arms without a (ga, overrides) row: the re-weighting control (a plain batch of b drawn with the
#: stratified coreset's expected source mix, no pool).
CONTROLS: dict[str, Arm] = {"reweighted": PRESETS["reweighted"]}
GROUPS = {"main": MAIN_ARMS, "candidates": CANDIDATES, "ablations": ABLATIONS, "controls": CONTROLS}
TABLE = {**MAIN_ARMS, **CANDIDATES, **ABLATIONS}
CONTROL = "stratified_b_of_2b"


def lab_arm(name: str) -> Arm:
    """The library arm of a quality.py arm name (see the tables above)."""
    if name in CONTROLS:
        return CONTROLS[name]
    ga, overrides = TABLE[name]
    return Arm(name, accumulation=ga, coreset=overrides)


def make_lab(s: dict[str, Any], tokenizer, train, evald) -> Lab:
    """The tiny lab: embedded model seeded per seed, cosine schedule, warm-up a tenth of the steps."""

    def training_args(steps: int, ga: int, seed: int, out: str) -> TrainingArguments:
        return TrainingArguments(
            output_dir=out, per_device_train_batch_size=s["batch"],
            gradient_accumulation_steps=ga, max_steps=steps, learning_rate=s["lr"],
            lr_scheduler_type="cosine", warmup_steps=max(1, steps // 10), logging_steps=10**6,
            save_strategy="no", report_to=[], seed=seed, data_seed=seed, disable_tqdm=True,
            dataloader_num_workers=0, use_cpu=not torch.cuda.is_available(),
        )

    return Lab(tokenizer=tokenizer, train=train, evald=evald,
               new_model=lambda seed: default_model(tokenizer, size=s["model_size"], seed=seed),
               training_args=training_args, base_coreset=CoresetConfig(pool_factor=2),
               batch=s["batch"], output_dir=Path("/tmp/colm_quality"))


def with_natural(runs: list[dict[str, Any]], train_rows: dict[str, int]) -> list[dict[str, Any]]:
    """Rows with the natural-mixture loss, recomputed from their per-source losses where a row
    predates it (weights: the training rows per source, `train_rows`)."""
    return [r if "val_loss_natural" in r else
            {**r, "val_loss_natural": mixture_losses(r["per_source"], train_rows)["natural"]} for r in runs]


def write_summary(runs: list[dict[str, Any]], path: Path) -> None:
    """The machine-readable summary: per arm, one value per seed (in seed order)."""
    keys = ("val_loss_natural", "val_loss_mean", "val_loss_worst")
    summary: dict[str, dict[str, list[float]]] = {}
    for r in sorted(runs, key=lambda r: r["seed"]):
        arm = summary.setdefault(r["arm"], {k: [] for k in keys})
        for k in keys:
            arm[k].append(r[k])
    path.write_text(json.dumps(summary, indent=2) + "\n")


def markdown_table(runs: list[dict[str, Any]], baseline: str = CONTROL) -> str:
    """Mean ± sd over seeds per arm, and each arm minus `baseline`, paired by seed, on the
    natural-mixture loss, the mean over sources and the worst source."""
    return loss_table(runs, baseline)


def training_rows(max_length: int) -> dict[str, int]:
    """Rows per source the arms train on (the natural-mixture weights): the shipped train split
    after tokenizing at `max_length` (rows with no answer token left are dropped, e.g. ~970 of
    math's at 128, so raw file counts would overweight those sources)."""
    train, _ = tokenize_mixture(load_mixture(default_mixture_dir(), split="train"), default_tokenizer(),
                                max_length=max_length)
    return dict(sorted(Counter(map(str, train["source"])).items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arms", default="main", help="comma-separated arm names or groups (main, candidates, ablations)")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--model-size", default="tiny")
    ap.add_argument("--eval-per-source", type=int, default=32)
    ap.add_argument("--budget", choices=["steps", "compute"], default="steps",
                    help="steps: every arm --steps; compute: --baseline gets --steps, every other arm "
                         "the steps that fit its compute (training rows; see colm.compare.budget)")
    ap.add_argument("--baseline", default=CONTROL, help="the arm differences are paired against")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--summary", type=Path, default=None,
                    help='also write {arm: {"val_loss_mean": [per seed], "val_loss_worst": [per seed]}} here')
    ap.add_argument("--summarize", action="store_true",
                    help="print the markdown table of an existing --out file (no training)")
    ap.add_argument("--merge", type=Path, default=None, metavar="OTHER.json",
                    help="add the runs of another --out file of the same settings to --out (arms "
                         "run by separate invocations, e.g. in parallel), then summarize")
    args = ap.parse_args()
    hf_logging.set_verbosity_error()
    if args.merge is not None:
        base, other = json.loads(args.out.read_text()), json.loads(args.merge.read_text())
        same = ("steps", "batch", "lr", "max_length", "model_size", "eval_per_source")
        differ = [k for k in same if base["settings"].get(k) != other["settings"].get(k)]
        if differ:
            ap.error(f"cannot merge: the runs differ in {differ}")
        have = {(r["arm"], r["seed"]) for r in base["runs"]}
        base["runs"] += [r for r in other["runs"] if (r["arm"], r["seed"]) not in have]
        args.out.write_text(json.dumps(base, indent=1, default=str))
        args.summarize = True
    if args.summarize:
        data = json.loads(args.out.read_text())
        runs = with_natural(data["runs"], data["settings"].get("train_rows")
                            or training_rows(data["settings"].get("max_length", args.max_length)))
        runs = [{"steps": data["settings"].get("steps"), **r} for r in runs]
        if args.summary:
            write_summary(runs, args.summary)
        print(markdown_table(runs, args.baseline))
        return

    table = {**TABLE, **CONTROLS}
    names = [n for part in args.arms.split(",") for n in (GROUPS[part] if part in GROUPS else [part])]
    unknown = [n for n in names if n not in table]
    if unknown:
        ap.error(f"unknown arm(s) {unknown}; arms: {sorted(table)} or groups {sorted(GROUPS)}")
    if args.baseline not in table:
        ap.error(f"--baseline {args.baseline}: unknown arm; arms: {sorted(table)}")
    s = {"steps": args.steps, "batch": args.batch, "lr": args.lr, "model_size": args.model_size}
    tokenizer = default_tokenizer()
    train, _ = tokenize_mixture(load_mixture(default_mixture_dir(), split="train"), tokenizer, max_length=args.max_length)
    evald, _ = tokenize_mixture(
        load_mixture(default_mixture_dir(), split="validation", max_examples_per_source=args.eval_per_source, seed=0),
        tokenizer, max_length=args.max_length,
    )
    lab = make_lab(s, tokenizer, train, evald)
    results = json.loads(args.out.read_text()) if args.out.is_file() else {"settings": {}, "runs": []}
    results["settings"] = {**results["settings"], **vars(args), "out": str(args.out),
                           "torch": torch.__version__, "threads": torch.get_num_threads(),
                           "train_rows": lab.train_rows}
    arms = [lab_arm(n) for n in names]
    # Compute budget: the baseline's steps, every other arm the steps its compute buys (no arm
    # here scores the pool except colm_b_of_2b-like arms, whose ratio would need a calibration).
    if args.budget == "compute" and any(arm_cost_scores(a, lab) for a in arms):
        ap.error("--budget compute with a scoring arm: use `colm compare`, which calibrates the cost ratio")
    plan = plan_steps(arms, lab_arm(args.baseline) if args.budget == "compute" else arms[0], lab,
                      args.steps, args.budget, {})
    done = {(r["arm"], r["seed"]) for r in results["runs"]}
    for seed in [int(x) for x in args.seeds.split(",")]:
        for arm in arms:
            if (arm.name, seed) in done:
                continue
            row = run_arm(arm, seed, lab, plan[arm.name]["steps"])
            row.update(budget=args.budget, units=plan[arm.name]["units"],
                       date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
            print(json.dumps({k: v for k, v in row.items() if k not in ("per_source", "coreset")}), flush=True)
            results["runs"].append(row)
            tmp = args.out.with_suffix(".tmp")
            tmp.write_text(json.dumps(results, indent=1, default=str))
            tmp.replace(args.out)
    runs = with_natural(results["runs"], lab.train_rows)
    if args.summary:
        write_summary(runs, args.summary)
    print(markdown_table(runs, args.baseline))


def arm_cost_scores(arm: Arm, lab: Lab) -> bool:
    cfg = arm.coreset_config(lab.base_coreset, 0)
    return bool(cfg and cfg.needs_features)


if __name__ == "__main__":
    main()
