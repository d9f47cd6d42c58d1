"""Quality on a real pretrained model: SmolLM2-135M-Instruct + LoRA on the shipped mixture.

Arms (same initialisation and data order per seed, same number of optimizer steps):

  random_b            plain training, batch b
  random_2b           batch 2b (2 x b, gradient accumulation)
  stratified_b_of_2b  the control: pool 2b, small sources whole, the rest at random (no features)
  colm_b_of_2b        the paper: pool 2b, facility location on zo (m = 1) features
  mean_match_b_of_2b  the candidate: pool 2b, mean matching on exact features, pool moment

After training, each run reports the per-source validation loss (mean over sources and worst
source) and the exact-match accuracy of greedy decoding on held-out questions with a numeric
answer (responses end "The answer is X"), ``--em-per-source`` per source. Sources with fewer
validation rows than that get the rest from their train split, which is then removed from
training for every arm.

GPU (one H200, the full run; every arm x seed job runs in its own process, ``--parallel`` at
a time, since a 135M model leaves the GPU mostly idle)::

    python benchmarks/pretrained.py --steps 400 --batch 16 --max-length 512 --seeds 0,1,2 \
        --parallel 15 --dtype bf16 --out benchmarks/results/pretrained.json

CPU check at toy size (minutes)::

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/pretrained.py --toy --out /tmp/pretrained_toy.json

The model comes from ``--model`` (a GGUF file or a model folder; default: the SmolLM2 GGUF that
``make smollm2`` installs), converted once into colm's cache before the jobs start. The device
machine takes 64 MiB of files per call and reaches no registry, so the 94 MiB GGUF travels in
parts: ``--split-model DIR`` writes ``DIR/smollm2.gguf.part0..`` (under 40 MiB each); carry DIR
across calls on a warm machine (or in one call per part), and ``--model DIR`` joins the parts.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ARMS: dict[str, tuple[int, dict[str, Any] | None]] = {
    # name: (gradient accumulation steps, CoresetConfig overrides or None for plain training)
    "random_b": (1, None),
    "random_2b": (2, None),
    "stratified_b_of_2b": (1, {"within_source": "random"}),
    "colm_b_of_2b": (1, {"within_source": "facility_location", "feature": "zo", "zo_probes": 1}),
    "mean_match_b_of_2b": (1, {"within_source": "mean_match", "feature": "exact", "adam_second_moment": "pool"}),
}
CONTROL = "stratified_b_of_2b"
PART_BYTES = 40 * 2**20


# ------------------------------------------------------------------------------ the model file
def split_model(source: Path, folder: Path) -> list[Path]:
    """Cut ``source`` into parts of at most PART_BYTES in ``folder`` (for the device's 64 MiB)."""
    folder.mkdir(parents=True, exist_ok=True)
    parts = []
    with open(source, "rb") as f:
        for k in range(1000):
            chunk = f.read(PART_BYTES)
            if not chunk:
                break
            part = folder / f"smollm2.gguf.part{k}"
            part.write_bytes(chunk)
            parts.append(part)
    (folder / "smollm2.gguf.parts.json").write_text(json.dumps(
        {"parts": [p.name for p in parts], "bytes": source.stat().st_size}))
    return parts


def resolve_model(spec: str | None) -> str:
    """A loadable model path: ``spec``, the installed SmolLM2 GGUF, or a GGUF joined from parts."""
    if spec is None:
        from colm.models.gguf import smollm2_path

        return str(smollm2_path())
    folder = Path(spec)
    manifest = folder / "smollm2.gguf.parts.json"
    if folder.is_dir() and manifest.is_file():
        info = json.loads(manifest.read_text())
        missing = [p for p in info["parts"] if not (folder / p).is_file()]
        if missing:
            raise SystemExit(f"{folder}: model parts {missing} have not arrived yet")
        joined = folder / "joined" / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if not joined.is_file() or joined.stat().st_size != info["bytes"]:
            joined.parent.mkdir(exist_ok=True)
            tmp = joined.with_suffix(".tmp")
            with open(tmp, "wb") as out:
                for p in info["parts"]:
                    out.write((folder / p).read_bytes())
            tmp.replace(joined)
        return str(joined)
    return spec


# ---------------------------------------------------------------------------------- the data
def prepare_data(tokenizer: Any, args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """(tokenized train, tokenized validation for the loss, raw exact-match questions)."""
    import datasets

    from colm.data import default_mixture_dir, load_mixture, tokenize_mixture
    from colm.data.chat import as_chat
    from colm.evaluation import extract_answer

    train_raw = load_mixture(default_mixture_dir(), split="train", sources=args.sources,
                             max_examples_per_source=args.train_per_source, seed=0)
    val_raw = load_mixture(default_mixture_dir(), split="validation", sources=args.sources, seed=0)

    def numeric(row: dict[str, Any]) -> bool:
        try:
            float(extract_answer(row["response"]).replace(",", ""))
            return True
        except ValueError:
            return False

    # exact-match questions: numeric validation rows, topped up from train where too few
    em_rows, moved = [], set()
    for source in sorted(set(val_raw["source"])):
        val = [r for r in val_raw if r["source"] == source and numeric(r)][: args.em_per_source]
        if len(val) < args.em_per_source:
            extra = [(i, r) for i, r in enumerate(train_raw) if r["source"] == source and numeric(r)]
            for i, r in extra[: args.em_per_source - len(val)]:
                val.append(r)
                moved.add(i)
        em_rows.extend(val)
    train_raw = train_raw.select([i for i in range(len(train_raw)) if i not in moved])
    em = datasets.Dataset.from_list(em_rows)
    loss_raw = load_mixture(default_mixture_dir(), split="validation", sources=args.sources,
                            max_examples_per_source=args.val_per_source, seed=0)
    chat = args.template == "chat"
    fmt = as_chat if chat else (lambda ds: ds)
    train, _ = tokenize_mixture(fmt(train_raw), tokenizer, max_length=args.max_length)
    val, _ = tokenize_mixture(fmt(loss_raw), tokenizer, max_length=args.max_length)
    return train, val, fmt(em)


# ----------------------------------------------------------------------------------- one job
def run_job(arm: str, seed: int, args: argparse.Namespace, model_path: str) -> dict[str, Any]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import TrainerCallback, TrainingArguments
    from transformers.utils import logging as hf_logging

    from colm import CoresetConfig
    from colm.data.templating import DEFAULT_TEMPLATE
    from colm.evaluation import generation_exact_match, mixture_losses, per_source_loss
    from colm.models.default import load_model_and_tokenizer
    from colm.training.memory import PeakMemory
    from colm.training.trainer import make_trainer

    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available() and not args.cpu
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    model, tok = load_model_and_tokenizer(model_path, dtype=dtype)
    train, val, em = prepare_data(tok, args)
    torch.manual_seed(seed)
    model = get_peft_model(model, LoraConfig(
        r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.05, task_type="CAUSAL_LM",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    ))
    ga, overrides = ARMS[arm]
    coreset = None if overrides is None else CoresetConfig(pool_factor=2, selection_seed=seed, **overrides)
    targs = TrainingArguments(
        output_dir=f"{args.workdir}/{arm}_{seed}", per_device_train_batch_size=args.batch,
        gradient_accumulation_steps=ga, max_steps=args.steps, learning_rate=args.lr,
        lr_scheduler_type="cosine", warmup_steps=max(1, args.steps // 20), logging_steps=10**6,
        save_strategy="no", report_to=[], seed=seed, data_seed=seed, disable_tqdm=True,
        dataloader_num_workers=0, use_cpu=not cuda, bf16=cuda and args.dtype == "bf16",
    )

    class Clock(TrainerCallback):
        marks: list[float] = []

        def on_step_end(self, *a, **k):
            self.marks.append(time.perf_counter())

    clock = Clock()
    noise = None
    if args.noise_scale_every:  # random_b has no accumulation: its measured steps are split in two
        from colm.cli.noise_scale import NoiseScaleArguments

        noise = NoiseScaleArguments(noise_scale_every=args.noise_scale_every, noise_scale_split=True)
    trainer = make_trainer(model, tok, train, targs, coreset, callbacks=[clock], log_selections=False,
                           noise_scale=noise)
    started = time.perf_counter()
    with PeakMemory() as mem:
        trainer.train()
    wall = time.perf_counter() - started
    gaps = [b - a for a, b in zip(clock.marks, clock.marks[1:])]
    with torch.no_grad():
        loss = per_source_loss(trainer.model, val, pad_token_id=tok.pad_token_id, batch_size=args.eval_batch)
    tok.padding_side = "left"
    exact = generation_exact_match(trainer.model, tok, em, template=DEFAULT_TEMPLATE,
                                   max_new_tokens=args.max_new_tokens, batch_size=args.eval_batch)
    return {
        # natural mixture: per-source loss weighted by the training rows' source shares
        "arm": arm, "seed": seed,
        "val_loss_natural": mixture_losses(loss["per_source"], _source_rows(train))["natural"],
        "val_loss_mean": loss["mean"], "val_loss_worst": loss["worst"],
        "worst_source": loss["worst_source"], "val_loss_per_source": loss["per_source"],
        "em_mean": exact["mean"], "em_overall": exact["overall"], "em_per_source": exact["per_source"],
        "em_n": exact["n"], "step_s": statistics.median(gaps) if gaps else math.nan, "wall_s": wall,
        "peak_mem_mib": mem.peak_bytes / 2**20, "mem_kind": mem.kind,
        "coreset": coreset.to_dict() if coreset else None,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        **({"noise_scale": noise_scale_row(trainer.noise_scale)} if noise is not None else {}),
    }


def noise_scale_row(callback: Any) -> dict[str, Any]:
    """The run's gradient noise scale: the summary and B_simple at every measured step
    (benchmarks/noise_scale.py relation --pretrained reads it)."""
    from colm.compare.noise_scale import arm_row_summary

    return arm_row_summary(callback) or {}


def _source_rows(dataset: Any) -> dict[str, int]:
    from collections import Counter

    return dict(Counter(map(str, dataset["source"])))


def _job(spec: tuple[str, int, argparse.Namespace, str]) -> dict[str, Any]:
    return run_job(*spec)


# ------------------------------------------------------------------------------ the report
def paired(runs: list[dict[str, Any]], arm: str, key: str) -> str:
    from scipy import stats as sstats

    by = {(r["arm"], r["seed"]): r[key] for r in runs}
    d = [by[(arm, s)] - by[(CONTROL, s)] for (a, s) in by if a == arm and (CONTROL, s) in by]
    if len(d) < 2:
        return f"{d[0]:+.3f} (1 seed)" if d else "—"
    m, sd = statistics.mean(d), statistics.stdev(d)
    half = float(sstats.t.ppf(0.975, len(d) - 1)) * sd / math.sqrt(len(d))
    return f"{m:+.3f} [{m - half:+.3f}, {m + half:+.3f}]"


def table(runs: list[dict[str, Any]]) -> str:
    def ms(values: list[float]) -> str:
        return f"{statistics.mean(values):.3f}" + (f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else "")

    lines = ["| arm | seeds | val loss natural mixture | − stratified | val loss mean over sources | − stratified "
             "| val loss worst | exact match (mean over sources) | − stratified | s/step |",
             "|---|---:|---|---|---|---|---|---|---|---:|"]
    for arm in ARMS:
        rs = [r for r in runs if r["arm"] == arm]
        if not rs:
            continue
        dl = "—" if arm == CONTROL else paired(runs, arm, "val_loss_mean")
        de = "—" if arm == CONTROL else paired(runs, arm, "em_mean")
        natural = [r["val_loss_natural"] for r in rs if "val_loss_natural" in r]
        dn = "—" if arm == CONTROL or len(natural) < len(rs) else paired(runs, arm, "val_loss_natural")
        lines.append(f"| {arm} | {len(rs)} | {ms(natural) if natural else '—'} | {dn} | "
                     f"{ms([r['val_loss_mean'] for r in rs])} | {dl} | "
                     f"{ms([r['val_loss_worst'] for r in rs])} | {ms([r['em_mean'] for r in rs])} | {de} | "
                     f"{statistics.median(r['step_s'] for r in rs):.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=False)
    ap.add_argument("--model", default=None, help="GGUF file, model folder, or a folder of model parts")
    ap.add_argument("--split-model", type=Path, default=None, metavar="DIR",
                    help="write the model GGUF in parts into DIR (for the device) and exit")
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=16, help="b: the coreset / plain batch")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    ap.add_argument("--template", choices=("chat", "plain"), default="chat",
                    help="chat: the model's chat template (an instruct model); plain: colm's Question/Answer")
    ap.add_argument("--sources", nargs="+", default=None)
    ap.add_argument("--train-per-source", type=int, default=None)
    ap.add_argument("--val-per-source", type=int, default=32)
    ap.add_argument("--em-per-source", type=int, default=30)
    ap.add_argument("--max-new-tokens", type=int, default=320)
    ap.add_argument("--eval-batch", type=int, default=64)
    ap.add_argument("--parallel", type=int, default=1, help="jobs at once (processes)")
    ap.add_argument("--noise-scale-every", type=int, default=0,
                    help="measure the gradient noise scale every N steps (0: off; benchmarks/noise_scale.py)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads per job")
    ap.add_argument("--cpu", action="store_true", help="stay on the CPU even with a GPU")
    ap.add_argument("--workdir", default="/tmp/colm_pretrained")
    ap.add_argument("--toy", action="store_true",
                    help="CPU check: 2 steps, b=2, 160 tokens, 3 sources, 2 questions each, fp32")
    ap.add_argument("--summarize", action="store_true", help="print the table of an existing --out")
    args = ap.parse_args(argv)
    if args.split_model is not None:
        parts = split_model(Path(resolve_model(args.model)), args.split_model)
        print("\n".join(str(p) for p in parts))
        return 0
    if args.out is None:
        ap.error("--out is required")
    if args.summarize:
        print(table(json.loads(args.out.read_text())["runs"]))
        return 0
    if args.toy:
        given = {a.split("=")[0] for a in (argv if argv is not None else sys.argv[1:])}
        args.steps, args.batch, args.dtype, args.cpu = 2, 2, "fp32", True
        args.max_length = args.max_length if "--max-length" in given else 160
        args.sources = args.sources or ["gsm8k", "svamp", "numglue_1"]
        args.train_per_source, args.val_per_source, args.em_per_source = 40, 4, 2
        args.max_new_tokens, args.eval_batch, args.seeds = 8, 4, args.seeds if args.seeds != "0,1,2" else "0"

    from colm.models.default import load_model_and_tokenizer

    model_path = resolve_model(args.model)
    load_model_and_tokenizer(model_path)  # converts a GGUF into the cache once, before the jobs
    arms = args.arms.split(",")
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        ap.error(f"unknown arm(s) {unknown}; arms: {list(ARMS)}")
    results = json.loads(args.out.read_text()) if args.out.is_file() else {"runs": []}
    done = {(r["arm"], r["seed"]) for r in results["runs"]}
    jobs = [(a, int(s), args, model_path) for s in args.seeds.split(",") for a in arms if (a, int(s)) not in done]
    results["settings"] = {k: v for k, v in vars(args).items() if k not in ("out", "split_model")}
    started = time.perf_counter()

    def record(row: dict[str, Any]) -> None:
        results["runs"].append(row)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=1))
        tmp.replace(args.out)
        print(json.dumps({k: row[k] for k in ("arm", "seed", "val_loss_mean", "em_mean", "step_s")}), flush=True)

    if args.parallel > 1:
        import multiprocessing

        with ProcessPoolExecutor(args.parallel, mp_context=multiprocessing.get_context("spawn")) as pool:
            for row in pool.map(_job, jobs):
                record(row)
    else:
        for job in jobs:
            record(_job(job))
    results["settings"]["wall_s"] = time.perf_counter() - started
    args.out.write_text(json.dumps(results, indent=1))
    print(table(results["runs"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
