"""`colm demo`: random b vs random 2b vs colm's default vs the paper's CoLM, at equal steps.

On the shipped 14-source math mixture with colm's embedded model (no download), four arms
start from the same initialisation and see the same data order:

* random b            plain training on batches of b;
* random 2b           plain training on 2b per step (2 x b with gradient accumulation: the
                      memory of b, the compute of 2b);
* stratified b of 2b  colm's default CoresetConfig: each step draws a pool of 2b, keeps the rare
                      sources' examples whole and fills the rest of b at random within sources
                      (no scoring pass);
* paper CoLM b of 2b  the same pool, the large sources' shares filled by facility location on
                      zeroth-order gradient features (the paper's method).

It prints a table and writes report.md, report.json and three PNG plots into --output-dir.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from colm.cli.errors import OneLineArgumentParser, UsageError

#: (name, label, colm.compare preset): the demo is `colm compare`'s harness on the embedded default.
ARMS = (
    ("random_b", "random b", "plain"),
    ("random_2b", "random 2b", "accumulate2"),
    ("stratified_b_of_2b", "stratified b of 2b", "stratified"),  # the default config
    ("paper_b_of_2b", "paper CoLM b of 2b", "paper"),
)
#: The arm whose selections the report and the share plot describe (colm's default).
SELECTION_ARM = "stratified_b_of_2b"
PLOTS = ("val_loss.png", "per_source_loss.png", "selection_share.png")
#: --quick: a seconds-long run that exercises every part (used by the tests).
QUICK = dict(steps=3, batch_size=4, max_length=128, train_per_source=8, eval_per_source=2, eval_points=2)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(
        prog="colm demo", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Train random b, random 2b, colm's default (stratified b of 2b) and the "
                    "paper's CoLM b-of-2b for the same number of optimizer steps on the shipped "
                    "math mixture with the embedded model; print a table and "
                    "write report.md and plots. Defaults take a few minutes on a 2-core CPU.",
    )
    p.add_argument("--steps", type=int, default=100, help="optimizer steps per arm")
    p.add_argument("--batch-size", type=int, default=16, help="b: examples per optimizer step")
    p.add_argument("--model-size", default="tiny", choices=["tiny", "small", "base"],
                   help="size of the embedded default model")
    p.add_argument("--max-length", type=int, default=128, help="tokens per example (longer: truncated)")
    p.add_argument("--learning-rate", type=float, default=3e-3, help="peak learning rate (AdamW)")
    p.add_argument("--eval-examples-per-source", type=int, default=16,
                   help="fixed validation subset: examples drawn per source")
    p.add_argument("--eval-points", type=int, default=6,
                   help="validation evaluations per arm, evenly spaced, including step 0 and the end")
    p.add_argument("--train-examples-per-source", type=int, default=None,
                   help="cap the training examples per source (default: all)")
    p.add_argument("--output-dir", default="runs/demo", help="where report.md, report.json and plots go")
    p.add_argument("--overwrite-output-dir", action="store_true",
                   help="replace another command's results (a colm train run, a colm compare) in --output-dir")
    p.add_argument("--seed", type=int, default=0, help="model initialisation, data order and selection seed")
    p.add_argument("--quick", action="store_true",
                   help="seconds-long micro run (3 steps, tiny batches) to check the installation")
    return p


def _settings(ns: argparse.Namespace) -> dict[str, Any]:
    s = {
        "steps": ns.steps, "batch_size": ns.batch_size, "max_length": ns.max_length,
        "train_per_source": ns.train_examples_per_source, "eval_per_source": ns.eval_examples_per_source,
        "eval_points": ns.eval_points,
    }
    if ns.quick:
        s.update(QUICK)
    s.update(model_size=ns.model_size, learning_rate=ns.learning_rate, seed=ns.seed, quick=ns.quick)
    for key in ("steps", "batch_size", "eval_per_source"):
        if s[key] < 1:
            raise UsageError(f"--{key.replace('_', '-')}: must be >= 1, got {s[key]}")
    if s["eval_points"] < 2:
        raise UsageError(f"--eval-points: must be >= 2 (start and end), got {s['eval_points']}")
    if s["max_length"] < 16:
        raise UsageError(f"--max-length: must be >= 16, got {s['max_length']}")
    if s["train_per_source"] is not None and s["train_per_source"] < 1:
        raise UsageError(f"--train-examples-per-source: must be >= 1, got {s['train_per_source']}")
    if not math.isfinite(s["learning_rate"]) or s["learning_rate"] <= 0:
        raise UsageError(f"--learning-rate: must be > 0, got {s['learning_rate']}")
    return s


def eval_schedule(steps: int, points: int) -> list[int]:
    """`points` evenly spaced steps from 0 to `steps` (deduplicated for short runs)."""
    return sorted({round(i * steps / (points - 1)) for i in range(points)})


def run(argv: Sequence[str]) -> int:
    ns = build_parser().parse_args(list(argv))
    s = _settings(ns)
    out = Path(ns.output_dir)
    from colm.cli.lock import OutputDirLock

    # Two demos into one folder would interleave their arms' files: the second is refused.
    with OutputDirLock(out, "--output-dir", "colm demo", command="colm demo " + " ".join(argv)) as lock:
        if lock.taken_over is not None:
            print(lock.takeover_note(), flush=True)
        from colm.cli import ownership

        ownership.check(out, "colm demo", ns.overwrite_output_dir)  # e.g. a colm train run's report
        s["overwrite_output_dir"] = ns.overwrite_output_dir
        return _demo(argv, s, out)


def _demo(argv: Sequence[str], s: dict[str, Any], out: Path) -> int:
    import torch

    from colm.compare.arms import PRESETS
    from colm.data.arguments import DataArguments
    from colm.models.arguments import ModelArguments
    from colm.selection.budget import small_sources
    from colm.training.plan import prepare_run

    # ---- everything that can fail on input, before writing anything
    t0 = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    training_args = _training_args(s, device)
    plan = prepare_run(
        ModelArguments(model_size=s["model_size"]),
        DataArguments(max_length=s["max_length"], max_examples_per_source=s["train_per_source"],
                      max_eval_examples_per_source=s["eval_per_source"]),
        training_args(s["steps"], 1, s["seed"], str(out)), need_eval=True,
    )
    train, evald, train_stats = plan.data.train, plan.data.eval, plan.data.train_stats
    sizes = train_stats["per_source"]
    small = sorted(small_sources("below_mean", sizes))  # the rule the selector applies
    print(f"colm demo: {len(train)} training / {len(evald)} validation examples from {len(sizes)} sources "
          f"(max length {s['max_length']}; {train_stats['n_truncated']} training examples truncated), "
          f"{s['model_size']} model on {device}, {s['steps']} steps of b={s['batch_size']} per arm "
          f"[{time.perf_counter() - t0:.0f} s to prepare]", flush=True)

    if s.get("overwrite_output_dir"):
        from colm.cli import ownership

        ownership.clear(out)
    out.mkdir(parents=True, exist_ok=True)
    lab = _lab(s, plan, training_args, out)
    arms = []
    for name, label, preset in ARMS:
        arm_dir = out / name
        for stale in ("metrics.jsonl", "selections.jsonl"):
            (arm_dir / stale).unlink(missing_ok=True)
        arms.append(_run_arm(name, label, PRESETS[preset], arm_dir, s, lab))

    from colm.integrations.selection_log import SELECTIONS_FILE, selection_summary

    selection = selection_summary(out / SELECTION_ARM / SELECTIONS_FILE)
    report = {
        "command": "colm demo " + " ".join(argv),
        "settings": s,
        "device": device,
        "data": {"train": train_stats, "validation": plan.data.eval_stats, "small_sources": small},
        "arms": [{k: v for k, v in a.items() if k != "trainer"} for a in arms],
        "selection": {k: v for k, v in (selection or {}).items() if k != "per_step"},
    }
    _write_outputs(out, report, arms, selection, sizes, small)
    print(_terminal_tables(arms, sizes, small))
    print(f"\nreport: {out / 'report.md'}  plots: " + ", ".join(str(out / p) for p in PLOTS))
    sys.stdout.flush()
    return 0


def _training_args(s: dict[str, Any], device: str):
    """The TrainingArguments factory of every arm: (steps, accumulation, seed, output_dir) -> args."""
    from transformers import TrainingArguments

    def training_args(steps: int, ga: int, seed: int, output_dir: str) -> TrainingArguments:
        return TrainingArguments(
            output_dir=output_dir, per_device_train_batch_size=s["batch_size"], gradient_accumulation_steps=ga,
            max_steps=steps, learning_rate=s["learning_rate"], lr_scheduler_type="cosine",
            warmup_steps=max(1, steps // 10), logging_steps=max(1, steps // 20), save_strategy="no",
            report_to=[], seed=seed, data_seed=seed, disable_tqdm=True,
            dataloader_num_workers=0, use_cpu=device == "cpu",
        )

    return training_args


def _lab(s, plan, training_args, out):
    from colm.compare.run import Lab
    from colm.config import CoresetConfig

    return Lab(tokenizer=plan.tokenizer, train=plan.data.train, evald=plan.data.eval,
               new_model=plan.new_model,  # the same initialisation for every arm of the seed
               training_args=training_args, base_coreset=CoresetConfig(pool_factor=2),
               batch=s["batch_size"], output_dir=out, train_rows=plan.train_rows)


def _run_arm(name, label, arm, arm_dir, s, lab) -> dict[str, Any]:
    from colm.cli.progress import MetricsFile, PeriodicEval
    from colm.compare.run import run_arm
    from colm.evaluation import per_source_loss, with_natural
    from colm.training.step_timer import StepTimer

    steps = s["steps"]
    started = time.perf_counter()
    metrics = MetricsFile(arm_dir / "metrics.jsonl")
    timer = StepTimer()

    def progress(step: int, result: dict[str, Any]) -> None:
        print(f"  [{label:>13}] step {step:>4}/{steps}  val loss natural {result['natural']:.3f}  "
              f"mean {result['mean']:.3f}  worst {result['worst']:.3f} ({result['worst_source']})  "
              f"{time.perf_counter() - started:5.0f} s", flush=True)

    evaluator = PeriodicEval(
        eval_schedule(steps, s["eval_points"]),
        lambda m: with_natural(per_source_loss(m, lab.evald, pad_token_id=lab.tokenizer.pad_token_id,
                                               batch_size=32), lab.train_rows),
        metrics=metrics, timer=timer, on_result=progress,
    )
    row = run_arm(arm, s["seed"], lab, steps, callbacks=[timer, metrics, evaluator],
                  log_selections=arm.pooled, output_dir=str(arm_dir))
    if row.get("diverged"):  # the demo's story needs every arm: stop at the first that diverged
        from colm.cli.errors import RunFailed

        raise RunFailed(f"the {label} arm diverged: {row['diverged']['message']}; no report was written")
    timing = timer.summary()
    print(f"  [{label:>13}] done: {timing['mean_s']:.3f} s/step, peak memory {row['peak_mem_mib']:.0f} MiB "
          f"({row['mem_kind']})", flush=True)
    return {
        "name": name, "label": label, "preset": arm.name,
        "gradient_accumulation_steps": row["gradient_accumulation_steps"], "coreset": row["coreset"],
        "history": evaluator.history, "final": evaluator.history[-1],
        "time": timing, "train_loss": row["train_loss"], "wall_s": time.perf_counter() - started,
        "memory": {"peak_bytes": row["peak_mem_mib"] * 2**20, "kind": row["mem_kind"],
                   "description": row["mem_description"]},
    }


def _summary_rows(arms: Sequence[dict[str, Any]]) -> list[list[Any]]:
    from colm.cli.report import mib

    return [
        [a["label"], a["final"]["natural"], a["final"]["mean"],
         f"{a['final']['worst']:.4f} ({a['final']['worst_source']})",
         f"{a['time']['mean_s']:.3f}", mib(a["memory"]["peak_bytes"])]
        for a in arms
    ]


SUMMARY_HEADERS = ["arm", "val loss (natural mixture)", "val loss (mean over sources)", "worst source",
                   "s / step", "peak memory"]


def _per_source_rows(arms, sizes, small) -> list[list[Any]]:
    rows = []
    for src in sorted(sizes, key=lambda x: -sizes[x]):
        tag = f"{src}{' *' if src in small else ''}"
        rows.append([tag, sizes[src], *(a["final"]["per_source"].get(src, math.nan) for a in arms)])
    return rows


def _terminal_tables(arms, sizes, small) -> str:
    from colm.cli.report import text_table

    return "\n".join([
        "", text_table(SUMMARY_HEADERS, _summary_rows(arms)), "",
        text_table(["source (* kept whole)", "train n", *(a["label"] for a in arms)],
                   _per_source_rows(arms, sizes, small)),
    ])


def _write_outputs(out: Path, report, arms, selection, sizes, small) -> None:
    from colm.cli.report import table, write_report
    from colm.compare import plots

    plots.loss_curves(arms, out / PLOTS[0])
    plots.per_source_bars(arms, sizes, out / PLOTS[1])
    if selection:
        plots.selection_shares(selection["per_step"], sizes, out / PLOTS[2], small=small,
                               window=max(1, min(10, selection["steps"] // 5)))
    s = report["settings"]
    mem_kind = arms[0]["memory"]["description"]
    lines = [
        "# colm demo", "",
        f"Four arms, {s['steps']} optimizer steps each, same initialisation ({s['model_size']} embedded "
        f"model, seed {s['seed']}) and data order, on the shipped 14-source math mixture "
        f"(max length {s['max_length']}, learning rate {s['learning_rate']}, cosine schedule), "
        f"on {report['device']}:", "",
        f"- **random b**: plain training, b = {s['batch_size']} examples per step;",
        f"- **random 2b**: plain training, 2b = {2 * s['batch_size']} per step (2 x {s['batch_size']}, "
        "gradient accumulation);",
        f"- **stratified b of 2b** (colm's default `CoresetConfig`): a random pool of "
        f"{2 * s['batch_size']} per step; every example of the small sources is kept, the rest of the "
        f"{s['batch_size']} drawn at random within the large sources, with no scoring pass;",
        "- **paper CoLM b of 2b**: the same pool, the large sources' shares filled by facility "
        "location on zeroth-order gradient features (`within_source='facility_location'`, "
        "`feature='zo'`).", "",
        f"Validation: a fixed subset of up to {s['eval_per_source']} examples per source; loss = mean "
        "token NLL of the answer. 'Natural mixture' weighs each source by its share of the training "
        "rows (the loss a large random batch optimizes); 'mean over sources' weighs every source "
        "equally. One seed: for intervals over seeds, run `colm compare` (see docs/cli.md).", "",
        table(SUMMARY_HEADERS, _summary_rows(arms)), "",
        f"Time per step: wall time per optimizer step (scoring and selection included, evaluation "
        f"excluded). Peak memory: {mem_kind}. All arms hold activations for b examples at a "
        "time (random 2b by gradient accumulation, the paper's CoLM by scoring its pool in chunks of "
        "b without gradients), so their peaks should be close: both coreset arms save the memory of a "
        "real batch of 2b; the paper's pays for its choice with a scoring pass (compare its time per "
        "step with random 2b's), the stratified arm does not. On CPU the number also counts allocator "
        "caching: compare arms of one run only.", "",
        "## Per-source validation loss", "",
        "Sources by training-set size; * = small source (below the mean size), kept whole by both "
        "coreset arms.", "",
        table(["source", "train n", *(a["label"] for a in arms)], _per_source_rows(arms, sizes, small)), "",
        "## Plots", "",
        f"![validation loss]({PLOTS[0]})", "", f"![per-source loss]({PLOTS[1]})", "",
    ]
    if selection:
        lines += [f"![selection share]({PLOTS[2]})", "", "## Selection", "",
                  table(["source", "pool share", "selected share", "kept fraction"],
                        [[src, v["pool_share"], v["selected_share"], v["kept_fraction"]]
                         for src, v in sorted(selection["per_source"].items(),
                                              key=lambda kv: -sizes.get(kv[0], 0))]), ""]
    lines += ["Files: report.json (all numbers), <arm>/metrics.jsonl (training logs and evaluations), "
              f"{SELECTION_ARM}/selections.jsonl and paper_b_of_2b/selections.jsonl (every step's pool "
              "and selection).", ""]
    write_report(out, report, "\n".join(lines))
