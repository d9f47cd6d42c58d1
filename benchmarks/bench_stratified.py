"""Step time of the stratified control (within_source="random") against plain random b, in one run.

The control draws a pool of 2b rows but looks at no feature and runs no scoring forward, so its
step should cost what a plain step of b costs, plus the pool bookkeeping (collating the pool to
find rows without supervision, selection, collating the coreset). Target: <= 1.05x random b.

Both arms train the same model size on the same fixed-length rows (every row truncated to
``--max-length``, so every batch has the same shape whichever rows are picked), in alternating
rounds so that load from other jobs hits both alike. Per round: the median step time of each arm
and their ratio; the result is the median ratio over rounds with its min-max.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_stratified.py --rounds 6 \
        --out benchmarks/results/stratified_speed.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from bench_trainer_overhead import StepTimer  # the script's folder is on sys.path
from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments
from transformers.utils import logging as hf_logging

from colm import CoresetConfig, CoresetTrainer
from colm.data import default_mixture_dir, load_mixture, tokenize_mixture
from colm.models.default import default_model, default_tokenizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="tiny")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--steps", type=int, default=22, help="steps per arm and round (2 warm-up)")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)

    tok = default_tokenizer()
    raw = load_mixture(default_mixture_dir(), split="train")
    data, _ = tokenize_mixture(raw, tok, max_length=args.max_length)
    data = data.filter(lambda r: len(r["input_ids"]) == args.max_length)  # one batch shape
    collate = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100)

    def targs(seed: int) -> TrainingArguments:
        return TrainingArguments(
            output_dir="/tmp/colm_bench_stratified", per_device_train_batch_size=args.batch,
            max_steps=args.steps, learning_rate=1e-3, logging_steps=10**6, save_strategy="no",
            report_to=[], use_cpu=True, disable_tqdm=True, seed=seed, dataloader_num_workers=0,
        )

    rounds = []
    for r in range(args.rounds):
        row = {}
        for arm in ("random_b", "stratified_b_of_2b") if r % 2 == 0 else ("stratified_b_of_2b", "random_b"):
            timer = StepTimer()
            model = default_model(tok, size=args.size, seed=r)
            if arm == "random_b":
                trainer = Trainer(model=model, args=targs(r), train_dataset=data, data_collator=collate,
                                  callbacks=[timer])
            else:
                trainer = CoresetTrainer(model=model, args=targs(r), train_dataset=data, data_collator=collate,
                                         callbacks=[timer],
                                         coreset_config=CoresetConfig(pool_factor=2, within_source="random"))
            trainer.train()
            row[arm] = statistics.median(timer.step_times(skip=2))
        row["ratio"] = row["stratified_b_of_2b"] / row["random_b"]
        rounds.append(row)
        print(json.dumps(row), flush=True)
    ratios = sorted(r["ratio"] for r in rounds)
    summary = {
        "median_ratio": statistics.median(ratios), "min_ratio": ratios[0], "max_ratio": ratios[-1],
        "random_b_s_median": statistics.median(r["random_b"] for r in rounds),
        "stratified_s_median": statistics.median(r["stratified_b_of_2b"] for r in rounds),
        "rows": len(data), "settings": vars(args) | {"out": str(args.out)}, "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    print(f"stratified / random b step time: median {summary['median_ratio']:.3f} "
          f"(min {summary['min_ratio']:.3f}, max {summary['max_ratio']:.3f}) over {args.rounds} rounds; "
          f"random b {summary['random_b_s_median']:.3f} s, stratified {summary['stratified_s_median']:.3f} s")
    if args.out:
        args.out.write_text(json.dumps({"summary": summary, "rounds": rounds}, indent=2) + "\n")


if __name__ == "__main__":
    main()
