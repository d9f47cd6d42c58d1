"""The paper arm's step on SmolLM2-135M + LoRA, scoring every pool row vs only the rows of large
sources (what the trainer does now: a small source is kept whole whatever its features say).

Both variants train the same steps from the same LoRA initialisation and data order, in
alternating blocks within one process, so the machine's load hits both alike; the report is the
ratio of median step times (and of scoring seconds per step), plus a check that the two picked
the same rows. Settings follow the pretrained lab (benchmarks/pretrained/lab.yaml): b = 8, pool
2b, max length 128, LoRA r = 16 on q/v, the paper's zo (m = 1) facility location.

    make smollm2
    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 .venv/bin/python benchmarks/pretrained/score_rows.py \
        --steps 8 --repeats 2 --out benchmarks/results/pretrained_score_rows.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from transformers import DataCollatorForSeq2Seq, TrainerCallback, TrainingArguments

from colm import CoresetConfig, CoresetTrainer
from colm.data import default_mixture_dir, load_mixture, tokenize_mixture
from colm.models.gguf import load_gguf, smollm2_path

PAPER = CoresetConfig(within_source="facility_location", feature="zo", zo_probes=1)


class StepTimes(TrainerCallback):
    """Seconds from one step's end to the next's: the whole step, including drawing the pool,
    scoring it and selecting (which happen before the Trainer's on_step_begin)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._last: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._last = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        self.times.append(now - self._last)
        self._last = now


class PickedRows(TrainerCallback):
    """The row ids every step trained on (from the trainer's last selection)."""

    def __init__(self) -> None:
        self.trainer = None
        self.picks: list[list[int]] = []

    def on_step_end(self, args, state, control, **kwargs):
        sel = self.trainer.last_selection
        self.picks.append(sel.indices.tolist() if sel is not None else [])


def lora_model(seed: int):
    from peft import LoraConfig, get_peft_model

    model, tokenizer = load_gguf(smollm2_path())
    torch.manual_seed(seed)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05,
                                             target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    return model, tokenizer


def run(every_row: bool, steps: int, data, tokenizer, out_dir: str) -> dict:
    model, _ = lora_model(0)
    trainer = CoresetTrainer(
        model=model, processing_class=tokenizer, train_dataset=data, coreset_config=PAPER,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
        args=TrainingArguments(output_dir=out_dir, per_device_train_batch_size=8, max_steps=steps,
                               learning_rate=6e-4, seed=0, data_seed=0, save_strategy="no", report_to=[],
                               logging_steps=steps, disable_tqdm=True),
    )
    if every_row:  # the behaviour before: every pool row scored
        trainer._rows_to_score = lambda rows: None
    clock, picked = StepTimes(), PickedRows()
    picked.trainer = trainer
    trainer.add_callback(clock)
    trainer.add_callback(picked)
    trainer.train()
    return {"step_s": clock.times, "score_s": trainer.score_seconds, "picks": picked.picks}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/pretrained_score_rows.json")
    args = ap.parse_args()
    _, tokenizer = load_gguf(smollm2_path())
    raw = load_mixture(default_mixture_dir(), split="train")
    data, _ = tokenize_mixture(raw, tokenizer, max_length=128)
    results: dict[str, list[dict]] = {"every_row": [], "large_sources_only": []}
    for k in range(args.repeats):
        order = ("every_row", "large_sources_only") if k % 2 == 0 else ("large_sources_only", "every_row")
        for name in order:  # ABBA blocks: a drift in the machine's load hits both variants alike
            got = run(name == "every_row", args.steps, data, tokenizer, f"/tmp/colm_score_rows/{name}")
            results[name].append(got)
            print(name, f"median step {statistics.median(got['step_s'][1:]):.2f} s, "
                        f"scoring {got['score_s'] / args.steps:.2f} s/step", flush=True)
    med = {k: statistics.median(t for r in v for t in r["step_s"][1:]) for k, v in results.items()}
    score = {k: statistics.median(r["score_s"] / args.steps for r in v) for k, v in results.items()}
    same = all(a["picks"] == b["picks"] for a, b in zip(results["every_row"], results["large_sources_only"]))
    summary = {
        "command": "benchmarks/pretrained/score_rows.py " + f"--steps {args.steps} --repeats {args.repeats}",
        "date": time.strftime("%Y-%m-%d"), "threads": torch.get_num_threads(),
        "median_step_s": med, "median_score_s_per_step": score,
        "step_ratio_large_only_over_every_row": med["large_sources_only"] / med["every_row"],
        "score_ratio_large_only_over_every_row": score["large_sources_only"] / score["every_row"],
        "same_picks": same,
        "runs": {k: [{"step_s": r["step_s"], "score_s": r["score_s"]} for r in v] for k, v in results.items()},
    }
    Path(args.out).write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=1))


if __name__ == "__main__":
    main()
