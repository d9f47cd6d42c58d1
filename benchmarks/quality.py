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

Results are appended arm by arm to the output JSON (re-running skips arms already there), so a
long run can be interrupted and resumed. The table gives mean +- sd over seeds and, per seed,
the paired difference of every arm minus the stratified control with a 95% t interval.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from scipy import stats as sstats
from transformers import TrainingArguments
from transformers.utils import logging as hf_logging

from colm import CoresetConfig
from colm.evaluation import per_source_loss
from colm.cli.memory import PeakMemory
from colm.cli.train import make_trainer
from colm.data import default_mixture_dir, load_mixture, tokenize_mixture
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
GROUPS = {"main": MAIN_ARMS, "candidates": CANDIDATES, "ablations": ABLATIONS}
CONTROL = "stratified_b_of_2b"


class StepClock:
    """Median wall time between optimizer steps (a transformers callback)."""

    def __init__(self) -> None:
        self.marks: list[float] = []

    def __getattr__(self, name):  # every other callback event is a no-op
        if name.startswith("on_"):
            return lambda *a, **k: None
        raise AttributeError(name)

    def on_step_end(self, *a, **k):
        self.marks.append(time.perf_counter())

    def median(self) -> float:
        gaps = [b - a for a, b in zip(self.marks, self.marks[1:])]
        return statistics.median(gaps) if gaps else float("nan")


def run_arm(name, ga, overrides, seed, s, tokenizer, train, evald, on_trainer=None) -> dict[str, Any]:
    """Train one arm and evaluate it. ``on_trainer(trainer)``, when given, is called once the
    trainer is built (e.g. to add callbacks) and returns a function whose dict joins the result."""
    coreset = None if overrides is None else CoresetConfig(pool_factor=2, selection_seed=seed, **overrides)
    targs = TrainingArguments(
        output_dir=f"/tmp/colm_quality/{name}_{seed}", per_device_train_batch_size=s["batch"],
        gradient_accumulation_steps=ga, max_steps=s["steps"], learning_rate=s["lr"],
        lr_scheduler_type="cosine", warmup_steps=max(1, s["steps"] // 10), logging_steps=10**6,
        save_strategy="no", report_to=[], seed=seed, data_seed=seed, disable_tqdm=True,
        dataloader_num_workers=0, use_cpu=not torch.cuda.is_available(),
    )
    model = default_model(tokenizer, size=s["model_size"], seed=seed)
    clock = StepClock()
    trainer = make_trainer(model, tokenizer, train, targs, coreset, callbacks=[clock], log_selections=False)
    extra = on_trainer(trainer) if on_trainer is not None else None
    started = time.perf_counter()
    with PeakMemory() as mem:
        trainer.train()
    wall = time.perf_counter() - started
    with torch.no_grad():
        val = per_source_loss(model, evald, pad_token_id=tokenizer.pad_token_id)
    return {
        **(extra() if extra is not None else {}),
        "arm": name, "seed": seed, "val_loss_mean": val["mean"], "val_loss_worst": val["worst"],
        "worst_source": val["worst_source"], "per_source": val["per_source"],
        "step_s": clock.median(), "wall_s": wall,
        # CPU: peak RSS growth over the arm's start (see colm.cli.memory); CUDA: max allocated.
        "peak_mem_mib": mem.peak_bytes / 2**20, "mem_kind": mem.kind,
        "coreset": coreset.to_dict() if coreset else None,
    }


def write_summary(runs: list[dict[str, Any]], path: Path) -> None:
    """The machine-readable summary: per arm, one value per seed (in seed order)."""
    summary: dict[str, dict[str, list[float]]] = {}
    for r in sorted(runs, key=lambda r: r["seed"]):
        arm = summary.setdefault(r["arm"], {"val_loss_mean": [], "val_loss_worst": []})
        arm["val_loss_mean"].append(r["val_loss_mean"])
        arm["val_loss_worst"].append(r["val_loss_worst"])
    path.write_text(json.dumps(summary, indent=2) + "\n")


def _mean_sd(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.3f}" if values else "—"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def paired(runs: list[dict[str, Any]], arm: str, base: str, key: str) -> dict[str, float] | None:
    """Per-seed differences arm - base on ``key``: mean, sd, 95% t interval, n."""
    by_seed = {(r["arm"], r["seed"]): r[key] for r in runs}
    diffs = [by_seed[(arm, s)] - by_seed[(base, s)] for (a, s) in by_seed if a == arm and (base, s) in by_seed]
    if len(diffs) < 2:
        return None
    mean, sd = statistics.mean(diffs), statistics.stdev(diffs)
    half = float(sstats.t.ppf(0.975, len(diffs) - 1)) * sd / math.sqrt(len(diffs))
    return {"mean": mean, "sd": sd, "lo": mean - half, "hi": mean + half, "n": len(diffs)}


def markdown_table(runs: list[dict[str, Any]]) -> str:
    """Mean ± sd over seeds per arm, and each arm minus the stratified control, paired by seed."""
    arms: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        arms.setdefault(r["arm"], []).append(r)
    lines = ["| arm | seeds | val loss, mean over sources | minus stratified (paired, 95% CI) "
             "| val loss, worst source | minus stratified (paired, 95% CI) | s / step (median) |",
             "|---|---:|---|---|---|---|---:|"]
    for arm, rs in arms.items():
        cells = []
        for key in ("val_loss_mean", "val_loss_worst"):
            d = paired(runs, arm, CONTROL, key) if arm != CONTROL else None
            cells.append(_mean_sd([r[key] for r in rs]))
            cells.append("—" if d is None else f"{d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]")
        lines.append(f"| {arm} | {len(rs)} | " + " | ".join(cells)
                     + f" | {statistics.median(r['step_s'] for r in rs):.3f} |")
    return "\n".join(lines)


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
        runs = json.loads(args.out.read_text())["runs"]
        if args.summary:
            write_summary(runs, args.summary)
        print(markdown_table(runs))
        return

    table = {**MAIN_ARMS, **CANDIDATES, **ABLATIONS}
    names = [n for part in args.arms.split(",") for n in (GROUPS[part] if part in GROUPS else [part])]
    unknown = [n for n in names if n not in table]
    if unknown:
        ap.error(f"unknown arm(s) {unknown}; arms: {sorted(table)} or groups {sorted(GROUPS)}")
    s = {"steps": args.steps, "batch": args.batch, "lr": args.lr, "model_size": args.model_size}
    tokenizer = default_tokenizer()
    train, _ = tokenize_mixture(load_mixture(default_mixture_dir(), split="train"), tokenizer, max_length=args.max_length)
    evald, _ = tokenize_mixture(
        load_mixture(default_mixture_dir(), split="validation", max_examples_per_source=args.eval_per_source, seed=0),
        tokenizer, max_length=args.max_length,
    )
    results = json.loads(args.out.read_text()) if args.out.is_file() else {"settings": {}, "runs": []}
    results["settings"] = {**vars(args), "out": str(args.out), "torch": torch.__version__,
                           "threads": torch.get_num_threads()}
    done = {(r["arm"], r["seed"]) for r in results["runs"]}
    for seed in [int(x) for x in args.seeds.split(",")]:
        for name in names:
            if (name, seed) in done:
                continue
            ga, overrides = table[name]
            row = run_arm(name, ga, overrides, seed, s, tokenizer, train, evald)
            row["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
            print(json.dumps({k: v for k, v in row.items() if k not in ("per_source", "coreset")}), flush=True)
            results["runs"].append(row)
            tmp = args.out.with_suffix(".tmp")
            tmp.write_text(json.dumps(results, indent=1, default=str))
            tmp.replace(args.out)
    if args.summary:
        write_summary(results["runs"], args.summary)
    print(markdown_table(results["runs"]))


if __name__ == "__main__":
    main()
