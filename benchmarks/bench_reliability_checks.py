"""Step time of CoresetTrainer with and without the non-finite checks (issues 20, 28), in one run.

The check reads the loss and gradient norm the Trainer already has, at log and save steps only.
Here it runs at *every* step (logging_steps=1, the worst case) and, for comparison, at the
default cadence (logging_steps=10); "off" replaces it with a no-op. Arms alternate (ABAB...) so
a change in machine load hits both. The check's own time per call is measured too: on a busy
shared CPU the step times of the two arms differ by more than the check could cost, and the
per-call time divided by the step time bounds what it adds.

Issue 28 added checks that run once per run, not per step: the last step's loss and gradient
norm, one pass over the trainable weights at the end (`check_weights`), and, on resume, a read of
every checkpoint file's header (`damaged_files`). Their time per call is measured against the
median step time of the same run (`end_checks` in the output).

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_reliability_checks.py \
        --out benchmarks/results/reliability_checks.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from bench_trainer_overhead import StepTimer  # the script's folder is on sys.path
from transformers import DataCollatorForSeq2Seq, TrainingArguments
from transformers.utils import logging as hf_logging

import colm.integrations.trainer as trainer_module
from colm import CoresetConfig, CoresetTrainer
from colm.data import default_mixture_dir, load_mixture, tokenize_mixture
from colm.models.default import default_model, default_tokenizer


def run_arm(check: bool, data, tokenizer, args) -> list[float]:
    real, real_weights = trainer_module.check_finite, trainer_module.check_weights
    if not check:
        trainer_module.check_finite = lambda *a, **k: None
        trainer_module.check_weights = lambda *a, **k: None
    try:
        model = default_model(tokenizer, size=args.size, seed=0)
        timer = StepTimer()
        with tempfile.TemporaryDirectory() as out:
            targs = TrainingArguments(
                output_dir=out, per_device_train_batch_size=args.batch, max_steps=args.steps,
                learning_rate=1e-3, logging_steps=args.logging_steps, save_strategy="no", report_to=[],
                use_cpu=not torch.cuda.is_available(), disable_tqdm=True, seed=0, dataloader_num_workers=0,
            )
            trainer = CoresetTrainer(
                model=model, args=targs, train_dataset=data, processing_class=tokenizer,
                data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
                coreset_config=CoresetConfig(pool_factor=2), callbacks=[timer],
            )
            from transformers.trainer_callback import PrinterCallback

            trainer.remove_callback(PrinterCallback)
            trainer.train()
    finally:
        trainer_module.check_finite, trainer_module.check_weights = real, real_weights
    steps = timer.step_times(0)
    return steps[2:]  # the first steps warm up


def check_cost_s(calls: int = 20000) -> float:
    """Seconds per call of the check itself on 0-d tensors of the training device: an upper
    bound on what it adds to a step where it runs (once per log or save step, never more)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    loss, norm = torch.tensor(7.5, device=device), torch.tensor(1.25, device=device)
    real = trainer_module.check_finite
    start = time.perf_counter()
    for step in range(calls):
        real(step, loss, norm)
    return (time.perf_counter() - start) / calls


def end_checks_s(tokenizer, args, calls: int = 20) -> dict[str, float]:
    """Seconds per call of the once-per-run checks on the benchmark's model: the weight pass at a
    run's end, and the header read of a checkpoint's files before a resume (a real checkpoint of
    this model, saved by a CoresetTrainer)."""
    from colm.integrations.checkpoint_files import damaged_files
    from colm.integrations.non_finite import check_weights

    model = default_model(tokenizer, size=args.size, seed=0)
    start = time.perf_counter()
    for _ in range(calls):
        check_weights(model, 0)
    weights = (time.perf_counter() - start) / calls
    with tempfile.TemporaryDirectory() as out:
        folder = Path(out) / "checkpoint-1"
        folder.mkdir()
        model.save_pretrained(folder)
        torch.save(torch.optim.AdamW(model.parameters()).state_dict(), folder / "optimizer.pt")
        start = time.perf_counter()
        for _ in range(calls):
            assert damaged_files(folder) == []
        files = (time.perf_counter() - start) / calls
    return {"check_weights_s": weights, "checkpoint_files_s": files}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="tiny")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--check-only", action="store_true", help="only time the check itself")
    args = ap.parse_args()
    per_call = check_cost_s()
    print(f"the check itself: {per_call * 1e6:.2f} us per call", flush=True)
    if args.check_only:
        return
    hf_logging.set_verbosity_error()
    tokenizer = default_tokenizer()
    raw = load_mixture(default_mixture_dir(), split="train", max_examples_per_source=64, seed=0)
    data, _ = tokenize_mixture(raw, tokenizer, max_length=args.max_length)
    results = {}
    for logging_steps in (1, 10):
        args.logging_steps = logging_steps
        times: dict[str, list[float]] = {"on": [], "off": []}
        for _ in range(args.repeats):
            for arm in ("off", "on"):
                times[arm] += run_arm(arm == "on", data, tokenizer, args)
        med = {arm: statistics.median(t) for arm, t in times.items()}
        results[f"logging_steps={logging_steps}"] = {
            "check_s_per_call": per_call, "check_share_of_step_at_most": per_call / med["off"],
            "median_step_s": med, "n_steps": {a: len(t) for a, t in times.items()},
            "on_over_off": med["on"] / med["off"],
        }
        print(f"logging_steps={logging_steps}: off {med['off']:.4f} s/step, on {med['on']:.4f} s/step, "
              f"on/off {med['on'] / med['off']:.4f}", flush=True)
    once = end_checks_s(tokenizer, args)
    step = results["logging_steps=10"]["median_step_s"]["off"]
    results["end_checks"] = {**once, "median_step_s": step,
                             **{k.replace("_s", "_over_step"): v / step for k, v in once.items()}}
    print(f"once per run: weight check {once['check_weights_s'] * 1e3:.2f} ms "
          f"({once['check_weights_s'] / step:.4f} of a step), checkpoint files "
          f"{once['checkpoint_files_s'] * 1e3:.2f} ms ({once['checkpoint_files_s'] / step:.4f} of a step)", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"args": {k: v for k, v in vars(args).items() if k != "out"},
                                        "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
