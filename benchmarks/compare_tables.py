"""Issue 18's tables from quality.py result files: both losses, both budgets, the harness overhead.

Runs of several quality.py files of the same settings (tiny lab: 100 steps, b = 16, lr 3e-3,
max length 128, 32 validation rows per source) are pooled; rows that predate the natural-mixture
loss get it recomputed from their per-source losses and the training rows per source
(colm.evaluation.mixture_losses). Equal steps: every arm at 100 steps. Equal compute: the
stratified control's compute (100 steps x 16 training rows; it has no scoring pass), every other
arm the steps that fit it (random 2b: 50 steps of 32 rows; plain and re-weighted b: 100).

    .venv/bin/python benchmarks/compare_tables.py \
        --steps benchmarks/results/quality_runs.json benchmarks/results/quality_reweighted_runs.json \
            benchmarks/results/quality_random_b_more_runs.json \
        --compute benchmarks/results/quality_compute_runs_a.json benchmarks/results/quality_compute_runs_b.json \
        --out benchmarks/results/compare_tiny.json
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from colm.compare.report import loss_table, summarize_arms
from colm.compare.stats import fraction_of_gap, mean_sd
from colm.evaluation import mixture_losses

CONTROL = "stratified_b_of_2b"
SAME = ("steps", "batch", "lr", "max_length", "model_size", "eval_per_source")


def load(paths: list[Path]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    runs, settings = [], None
    for path in paths:
        data = json.loads(path.read_text())
        s = data["settings"]
        if settings is None:
            settings = s
        differ = [k for k in SAME if s.get(k) != settings.get(k)]
        if differ:
            raise SystemExit(f"{path}: settings differ from {paths[0]} in {differ}")
        have = {(r["arm"], r["seed"]) for r in runs}
        runs += [r for r in data["runs"] if (r["arm"], r["seed"]) not in have]
    rows = next((json.loads(p.read_text())["settings"].get("train_rows") for p in paths
                 if json.loads(p.read_text())["settings"].get("train_rows")), None)
    if rows is None:
        raise SystemExit("no file records train_rows (run quality.py once with this version)")
    for r in runs:
        r.setdefault("val_loss_natural", mixture_losses(r["per_source"], rows)["natural"])
        r.setdefault("steps", settings["steps"])
    return runs, rows


def gap_fractions(runs: list[dict[str, Any]], low: str = "random_b", high: str = "random_2b") -> dict[str, dict[str, float]]:
    """Per arm and loss: where its mean lies from random b (0) to random 2b (1)."""
    means: dict[str, dict[str, float]] = {}
    for r in runs:
        means.setdefault(r["arm"], {}).setdefault("n", 0)
    out = {}
    for key in ("val_loss_natural", "val_loss_mean"):
        m = {a: mean_sd([r[key] for r in runs if r["arm"] == a])[0] for a in means}
        if low in m and high in m:
            for a in m:
                out.setdefault(a, {})[key] = fraction_of_gap(m[a], m[low], m[high])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=Path, nargs="+", required=True, help="quality.py files at equal steps")
    ap.add_argument("--compute", type=Path, nargs="*", default=[],
                    help="quality.py --budget compute files (arms other than the control)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    steps_runs, rows = load(args.steps)
    result: dict[str, Any] = {"train_rows": rows}
    print("## Equal steps (100), minus the stratified control\n")
    print(loss_table(steps_runs, CONTROL))
    print("\n## Equal steps, minus random 2b\n")
    print(loss_table(steps_runs, "random_2b"))
    result["steps"] = {"vs_stratified": summarize_arms(steps_runs, CONTROL),
                       "vs_random_2b": summarize_arms(steps_runs, "random_2b"),
                       "gap_fraction": gap_fractions(steps_runs)}
    print("\nfraction of the random b -> random 2b gap (mean of the arm):",
          json.dumps(result["steps"]["gap_fraction"], indent=None))
    if args.compute:
        compute_runs, _ = load(args.compute)
        # Equal compute = the control's 100 x 16 training rows: arms of b rows without a scoring
        # pass train 100 steps, so their equal-steps runs are their equal-compute runs.
        b_arms = ("random_b", "reweighted", CONTROL)
        pooled = [r for r in steps_runs if r["arm"] in b_arms] + [
            {**r, "arm": f"{r['arm']}@{r['steps']}"} for r in compute_runs]
        print("\n## Equal compute (the control's 1,600 training rows), minus the stratified control\n")
        print(loss_table(pooled, CONTROL))
        result["compute"] = {"vs_stratified": summarize_arms(pooled, CONTROL)}
    # Harness overhead: building each arm's config, sampler, model and trainer plus the progress
    # display, over the arm's training wall time. A process's first run also pays one-time imports.
    harness, later = [], []
    for path in args.steps + args.compute:
        rs = [r for r in json.loads(path.read_text())["runs"] if "harness_s" in r]
        harness += [r["harness_s"] / r["wall_s"] for r in rs]
        later += [r["harness_s"] / r["wall_s"] for r in rs[1:]]
    if harness:
        result["harness_fraction"] = {"median": statistics.median(harness), "max": max(harness), "n": len(harness),
                                      "max_after_first_run_of_a_file": max(later) if later else None}
        print(f"\nharness overhead / training wall time over {len(harness)} runs: median "
              f"{100 * statistics.median(harness):.2f}%, max {100 * max(harness):.2f}% (a file's first run, "
              f"one-time imports included); max over the later runs {100 * max(later or [0]):.2f}%")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
