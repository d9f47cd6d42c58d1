"""Quality at equal optimizer steps, ablations and CPU efficiency (issue 6, items 1-3).

Every arm trains the embedded default model from the same initialisation (per seed) on the
shipped math mixture for the same number of optimizer steps, then reports per-source validation
loss on a fixed validation subset, time per step and peak memory growth of the process. Arms:

  random_b       plain training, batch b
  random_2b      batch 2b (gradient accumulation 2 x b)
  random_4b      batch 4b (gradient accumulation 4 x b)
  colm_b_of_2b   CoresetTrainer, pool 2b, coreset b, default CoresetConfig
  ablations (colm_b_of_2b with one change): no_small_sources, no_adam, no_sparsify,
                 zo_fixed_z (m=1, one z for the run: the reference code), exact, weighted

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 .venv/bin/python benchmarks/quality.py --arms main \
        --seeds 0,1,2 --out benchmarks/results/quality_runs.json --summary benchmarks/results/quality.json
    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 .venv/bin/python benchmarks/quality.py --arms ablations \
        --seeds 0,1 --out benchmarks/results/ablations_runs.json --summary benchmarks/results/ablations.json

Results are appended arm by arm to the output JSON (re-running skips arms already there), so a
long run can be interrupted and resumed.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from transformers import TrainingArguments
from transformers.utils import logging as hf_logging

from colm import CoresetConfig
from colm.cli.evaluation import per_source_loss
from colm.cli.memory import PeakMemory
from colm.cli.train import make_trainer
from colm.data import default_mixture_dir, load_mixture, tokenize_mixture
from colm.default_model import default_model, default_tokenizer

MAIN_ARMS: dict[str, tuple[int, dict[str, Any] | None]] = {
    # name: (gradient_accumulation_steps, CoresetConfig overrides or None for plain training)
    "random_b": (1, None),
    "random_2b": (2, None),
    "random_4b": (4, None),
    "colm_b_of_2b": (1, {}),
}
ABLATIONS: dict[str, tuple[int, dict[str, Any] | None]] = {
    "no_small_sources": (1, {"small_sources": "none"}),
    "no_adam": (1, {"adam_normalize": False}),
    "no_sparsify": (1, {"topk_dims": None}),
    "zo_fixed_z": (1, {"zo_fixed_z": True, "zo_probes": 1}),
    "exact": (1, {"feature": "exact"}),
    "weighted": (1, {"weighted": True}),
}


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


def run_arm(name, ga, overrides, seed, s, tokenizer, train, evald) -> dict[str, Any]:
    coreset = None if overrides is None else CoresetConfig(pool_factor=2, seed=seed, **overrides)
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
    started = time.perf_counter()
    with PeakMemory() as mem:
        trainer.train()
    wall = time.perf_counter() - started
    with torch.no_grad():
        val = per_source_loss(model, evald, pad_token_id=tokenizer.pad_token_id)
    return {
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


def markdown_table(runs: list[dict[str, Any]]) -> str:
    """Mean ± sd over seeds per arm (validation loss mean over sources, worst source, s/step)."""
    arms: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        arms.setdefault(r["arm"], []).append(r)
    lines = ["| arm | seeds | val loss, mean over sources | val loss, worst source | s / step (median) |",
             "|---|---:|---|---|---:|"]
    for arm, rs in arms.items():
        lines.append(
            f"| {arm} | {len(rs)} | {_mean_sd([r['val_loss_mean'] for r in rs])} | "
            f"{_mean_sd([r['val_loss_worst'] for r in rs])} | {statistics.median(r['step_s'] for r in rs):.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arms", default="main", help="'main', 'ablations' or comma-separated arm names")
    ap.add_argument("--seeds", default="0,1,2")
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
    args = ap.parse_args()
    hf_logging.set_verbosity_error()
    if args.summarize:
        runs = json.loads(args.out.read_text())["runs"]
        if args.summary:
            write_summary(runs, args.summary)
        print(markdown_table(runs))
        return

    table = {**MAIN_ARMS, **ABLATIONS}
    names = (list(MAIN_ARMS) if args.arms == "main" else list(ABLATIONS) if args.arms == "ablations"
             else args.arms.split(","))
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
            tmp.write_text(json.dumps(results, indent=1))
            tmp.replace(args.out)
    if args.summary:
        write_summary(results["runs"], args.summary)
    print(markdown_table(results["runs"]))


if __name__ == "__main__":
    main()
