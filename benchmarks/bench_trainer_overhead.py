"""CoresetTrainer's wall time per optimizer step against the "ideal" CoLM step, in one run.

The ideal is what the paper counts: one no-grad forward of the pool plus a forward/backward of
the coreset and the optimizer step, measured here by hand on the same model and data. The
trainer's step additionally pays for feature extraction beyond that forward (the last-layer
replays), selection, collation, logging and the Trainer's own loop. A plain `Trainer` step on
the coreset-sized batch is measured too, for scale.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_trainer_overhead.py \
        --sizes tiny,base --out benchmarks/results/trainer_overhead.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments
from transformers.utils import logging as hf_logging

from colm import CoresetConfig, CoresetTrainer
from colm.data import default_mixture_dir, load_mixture, tokenize_mixture
from colm.models.default import default_model, default_tokenizer


class StepTimer(TrainerCallback):
    """Wall time between consecutive optimizer-step ends (selection included)."""

    def __init__(self):
        self.ends: list[float] = []

    def on_train_begin(self, *a, **k):
        self.ends.append(time.perf_counter())

    def on_step_end(self, *a, **k):
        self.ends.append(time.perf_counter())

    def step_times(self, skip: int) -> list[float]:
        return [b - a for a, b in zip(self.ends, self.ends[1:])][skip:]


def args_for(out: Path, batch: int, steps: int) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=batch, gradient_accumulation_steps=1,
        max_steps=steps, learning_rate=1e-3, logging_steps=10**6, save_strategy="no", report_to=[],
        use_cpu=True, disable_tqdm=True, seed=0, dataloader_num_workers=0,
    )


def ideal_step(model, collate, rows, pool: int, batch: int, config: CoresetConfig) -> float:
    """Forward (no grad) of the pool in chunks of `batch` + forward/backward/step on `batch`."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    pool_batch = collate(rows[:pool])
    chunks = [{k: v[i : i + batch] for k, v in pool_batch.items()} for i in range(0, pool, batch)]
    coreset = collate(rows[:batch])
    times = []
    for _ in range(4):
        t0 = time.perf_counter()
        with torch.no_grad():
            for c in chunks:
                model(**c)
        model(**coreset).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="tiny,base")
    ap.add_argument("--batch", type=int, default=64, help="coreset = per-device batch; pool = 2x")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--features", default="zo,exact,hidden")
    ap.add_argument("--zo-probes", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    hf_logging.set_verbosity_error()
    torch.manual_seed(0)

    tok = default_tokenizer()
    raw = load_mixture(default_mixture_dir(), split="train", max_examples_per_source=150)
    data, _ = tokenize_mixture(raw, tok, max_length=args.max_length)
    # Fixed-length rows so that the ideal and the trainer see the same shapes.
    data = data.filter(lambda r: len(r["input_ids"]) >= args.max_length // 2)
    collate = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100)
    rows = [{k: r[k] for k in ("input_ids", "attention_mask", "labels")} for r in data.shuffle(seed=0).select(range(2 * args.batch))]

    results = []
    out_dir = Path("/tmp/colm_bench_overhead")
    for size in args.sizes.split(","):
        model = default_model(tok, size=size)
        n_params = sum(p.numel() for p in model.parameters())
        ideal = ideal_step(model, collate, rows, 2 * args.batch, args.batch, CoresetConfig())
        timer = StepTimer()
        Trainer(model=model, args=args_for(out_dir, args.batch, args.steps), train_dataset=data,
                data_collator=collate, callbacks=[timer]).train()
        plain = statistics.median(timer.step_times(skip=1))
        row = {"size": size, "params": n_params, "ideal_s": ideal, "plain_trainer_b_s": plain}
        for feature in args.features.split(","):
            cfg = CoresetConfig(within_source="facility_location", feature=feature, zo_probes=args.zo_probes)
            timer = StepTimer()
            CoresetTrainer(model=model, args=args_for(out_dir, args.batch, args.steps), train_dataset=data,
                           data_collator=collate, callbacks=[timer], coreset_config=cfg).train()
            row[f"colm_{feature}_s"] = statistics.median(timer.step_times(skip=1))
            row[f"colm_{feature}_over_ideal"] = row[f"colm_{feature}_s"] / ideal
        results.append(row)
        print(json.dumps(row), flush=True)

    info = {"torch": torch.__version__, "threads": torch.get_num_threads(), "batch": args.batch,
            "pool": 2 * args.batch, "max_length": args.max_length, "zo_probes": args.zo_probes,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    print("| model | params | ideal s | plain Trainer (b) s | " + " | ".join(
        f"CoLM {f} s (x ideal)" for f in args.features.split(",")) + " |")
    for r in results:
        cells = " | ".join(f"{r[f'colm_{f}_s']:.2f} ({r[f'colm_{f}_over_ideal']:.2f}x)" for f in args.features.split(","))
        print(f"| {r['size']} | {r['params']/1e6:.1f}M | {r['ideal_s']:.2f} | {r['plain_trainer_b_s']:.2f} | {cells} |")
    if args.out:
        args.out.write_text(json.dumps({"info": info, "results": results}, indent=2))


if __name__ == "__main__":
    main()
