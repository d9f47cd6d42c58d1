"""The ceiling of selection on the tiny lab (issue 18, item 4).

How far can *any* choice of b rows out of a pool of 2b go? Four arms pick with the best
information there is: full-model per-example gradients (torch.func) mapped into the real
optimizer's Adam space (``feature="full_adam"``, colm.features.full), then

  ceiling_mm_small     mean matching, uniform loss weights, small sources kept whole
  ceiling_mm_none      the same with small_sources="none"
  ceiling_nnls_small   mean matching's rows with the best non-negative loss weights (NNLS,
                       colm.selection.methods.nnls), small sources kept whole
  ceiling_nnls_none    the same with small_sources="none"

Everything else is benchmarks/quality.py's protocol and code path (``run_arm``: the embedded
default model, the shipped math mixture, 100 steps, b = 16, pool 2b, same seeds), so the
controls (random_b, random_2b, stratified_b_of_2b, reweighted, mean_match_pool) are its stored runs (the
files of CONTROL_FILES); ``--check-control ARM`` reruns one of them on seed 0 and prints how far
it lands from each stored copy.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 nice .venv/bin/python benchmarks/ceiling.py \\
        --arms ceiling_nnls_small,ceiling_nnls_none --seeds 0,1,2,3,4,5,6,7,8,9 \\
        --out benchmarks/results/ceiling_runs.json
    .venv/bin/python benchmarks/ceiling.py --out benchmarks/results/ceiling_runs.json --summarize

Runs are appended per arm x seed (an interrupted run resumes). The summary reports both losses:
the mean over the 14 sources and the natural-mixture loss (each source's validation loss
weighted by its share of the training rows), mean +- sd, paired differences with 95% t
intervals vs the stratified control and vs random 2b, and the fraction of the random b ->
random 2b gap each arm recovers.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality  # noqa: E402  (the same run_arm and paired statistics)

FULL = {"feature": "full_adam", "adam_normalize": False, "topk_dims": None}
ARMS: dict[str, tuple[int, dict[str, Any]]] = {
    "ceiling_mm_small": (1, {**FULL, "within_source": "mean_match"}),
    "ceiling_mm_none": (1, {**FULL, "within_source": "mean_match", "small_sources": "none"}),
    "ceiling_nnls_small": (1, {**FULL, "within_source": "nnls"}),
    "ceiling_nnls_none": (1, {**FULL, "within_source": "nnls", "small_sources": "none"}),
}
# The cheapest explanations of a ceiling arm's effect: random b and 2b, random fill with small
# sources whole (stratified), a plain batch re-weighted to its source mix (no pool), and the
# last-layer features the ceiling is measured against.
CONTROLS = ("random_b", "random_2b", "stratified_b_of_2b", "reweighted", "mean_match_pool")
RESULTS = Path(__file__).resolve().parent / "results"
QUALITY_RUNS = RESULTS / "quality_runs.json"
# random b's seeds 5-9 ran later, with the same protocol, into their own files (docs/benchmarks.md).
CONTROL_FILES = (QUALITY_RUNS, RESULTS / "quality_reweighted_runs.json",
                 *(RESULTS / f"quality_random_b_more_{part}_runs.json" for part in "abc"))
# random b's seeds 0-4 rerun on another machine of the same kind: not used in the tables, kept to
# show how far a control moves between machines (--check-control compares against it too).
OTHER_MACHINE_RUNS = RESULTS / "quality_random_b_rerun_runs.json"
SAME_PROTOCOL = ("steps", "batch", "lr", "max_length", "model_size", "eval_per_source")
LOSSES = {"val_loss_mean": "mean over sources", "val_loss_natural": "natural mixture"}


def training_shares(max_length: int) -> dict[str, float]:
    """Each source's share of the rows the arms train on (the natural mixture's weights): the
    same weights as colm compare and quality.py (the train split after tokenizing)."""
    counts = quality.training_rows(max_length)
    total = sum(counts.values())
    return {k: v / total for k, v in counts.items()}


def natural_loss(per_source: dict[str, float], shares: dict[str, float]) -> float:
    """Per-source validation loss weighted by the source's share of the training rows."""
    missing = sorted(set(shares) - set(per_source))
    if missing:
        raise ValueError(f"run has no validation loss for sources {missing}")
    return sum(shares[k] * per_source[k] for k in shares)


def _settings(args) -> dict[str, Any]:
    return {"steps": args.steps, "batch": args.batch, "lr": args.lr, "model_size": args.model_size}


def _run(arm, seed: int, args, tokenizer, train, evald) -> dict[str, Any]:
    """One arm (a colm.compare.arms.Arm) x seed through colm compare's harness, in quality.py's
    lab (the same code path)."""
    from colm.compare.run import run_arm

    lab = quality.make_lab(_settings(args), tokenizer, train, evald)
    return run_arm(arm, seed, lab, args.steps)


def _data(args):
    from colm.data import default_mixture_dir, load_mixture, tokenize_mixture
    from colm.models.default import default_tokenizer

    tokenizer = default_tokenizer()
    train, _ = tokenize_mixture(load_mixture(default_mixture_dir(), split="train"), tokenizer, max_length=args.max_length)
    evald, _ = tokenize_mixture(
        load_mixture(default_mixture_dir(), split="validation", max_examples_per_source=args.eval_per_source, seed=0),
        tokenizer, max_length=args.max_length,
    )
    return tokenizer, train, evald


def stored_controls(settings: dict[str, Any], fail) -> list[dict[str, Any]]:
    """The control runs of every file in CONTROL_FILES, each file checked to share the ceiling
    runs' protocol, and no (arm, seed) stored twice."""
    runs: dict[tuple[str, int], dict[str, Any]] = {}
    for path in CONTROL_FILES:
        stored = json.loads(path.read_text())
        differ = [k for k in SAME_PROTOCOL if stored["settings"].get(k) != settings.get(k)]
        if differ:
            fail(f"{path.name} and the ceiling runs differ in {differ}")
        for r in stored["runs"]:
            if r["arm"] not in CONTROLS:
                continue
            if (r["arm"], r["seed"]) in runs:
                fail(f"{path.name}: {r['arm']} seed {r['seed']} is stored twice")
            runs[(r["arm"], r["seed"])] = r
    return list(runs.values())


def check_control(arm: str, args) -> None:
    """Rerun a stored control on seed 0 and print its distance to every stored copy of it (the
    one in CONTROL_FILES, which --summarize uses, and the other machine's, if any)."""
    copies = [(path.name, r) for path in (*CONTROL_FILES, OTHER_MACHINE_RUNS)
              for r in json.loads(path.read_text())["runs"] if r["arm"] == arm and r["seed"] == 0]
    tokenizer, train, evald = _data(args)
    row = _run(quality.lab_arm(arm), 0, args, tokenizer, train, evald)
    for name, stored in copies:
        diffs = {k: abs(row["per_source"][k] - stored["per_source"][k]) for k in stored["per_source"]}
        print(json.dumps({"arm": arm, "seed": 0, "stored_in": name, "stored_val_loss_mean": stored["val_loss_mean"],
                          "rerun_val_loss_mean": row["val_loss_mean"], "exact": row["per_source"] == stored["per_source"],
                          "max_abs_diff_per_source": max(diffs.values()), "step_s": row["step_s"]}))


def match_errors(args, pools: int = 5) -> None:
    """How close b rows can bring the step to the pool's: ``match_error`` (||weighted coreset mean
    - pool mean|| / ||pool mean|| of the full_adam features) of each fill on random pools of 2b
    training rows, for the initial model (a fresh AdamW: the first step's Adam space)."""
    import torch
    from transformers import DataCollatorForSeq2Seq

    from colm import CoresetConfig
    from colm.features import gradient_features
    from colm.models.default import default_model
    from colm.selection.selector import CoresetSelector

    tokenizer, train, _ = _data(args)
    collate = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    sizes = dict(Counter(str(s) for s in train["source"]))
    model = default_model(tokenizer, size=args.model_size, seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    fills = {name: cfg for name, (_, cfg) in ARMS.items()}
    fills["stratified_random"] = {**FULL, "within_source": "random"}
    fills["random_none"] = {**FULL, "within_source": "random", "small_sources": "none"}
    errors: dict[str, list[float]] = {name: [] for name in fills}
    gen = torch.Generator().manual_seed(0)
    for _ in range(pools):
        rows = torch.randperm(len(train), generator=gen)[: 2 * args.batch].tolist()
        sources = [str(train[i]["source"]) for i in rows]
        batch = collate([{k: train[i][k] for k in ("input_ids", "attention_mask", "labels")} for i in rows])
        feats = gradient_features(model, [dict(batch)], CoresetConfig(**fills["ceiling_mm_small"]), optimizer=optimizer)
        for name, cfg in fills.items():
            sel = CoresetSelector(CoresetConfig(pool_factor=2, **cfg), sizes).select(feats, sources, args.batch)
            errors[name].append(sel.stats["match_error"])
    print(json.dumps({name: {"mean": statistics.mean(v), "sd": statistics.stdev(v), "per_pool": v}
                      for name, v in errors.items()}, indent=1))


def _stats(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1 else (
        f"{values[0]:.3f}" if values else "—")


def _interval(d: dict[str, float] | None) -> str:
    return "—" if d is None else f"{d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}] ({d['n']})"


def _on_common_seeds(runs: list[dict[str, Any]], arms: list[str], key: str) -> tuple[list[float], int]:
    """Per arm, the mean of ``key`` over the seeds every one of ``arms`` has, and their count."""
    by = {(r["arm"], r["seed"]): r[key] for r in runs}
    seeds = sorted(set.intersection(*({s for (a, s) in by if a == arm} for arm in arms)))
    if not seeds:
        return [float("nan")] * len(arms), 0
    return [statistics.mean(by[(arm, s)] for s in seeds) for arm in arms], len(seeds)


def _fraction(num: float, den: float, n: int) -> str:
    return "—" if n == 0 or den == 0 else f"{100 * num / den:.0f}% ({n})"


def paired(runs: list[dict[str, Any]], arm: str, base: str, key: str) -> dict[str, float] | None:
    """Seed-paired ``arm - base`` on ``key`` (colm.compare.stats), or None below 2 common seeds."""
    from colm.compare.stats import IntervalError, paired_difference

    def by_seed(name: str) -> dict[int, float]:
        return {r["seed"]: r[key] for r in runs if r["arm"] == name}

    try:
        return paired_difference(by_seed(arm), by_seed(base)).as_dict()
    except IntervalError:
        return None


def summarize(runs: list[dict[str, Any]], shares: dict[str, float]) -> str:
    """Markdown: per arm and loss, mean ± sd, paired differences vs the stratified control, vs
    the re-weighting control (no pool) and vs random 2b, and the fraction of the random b -> random 2b gap recovered, computed on the
    seeds the arm, random b and random 2b share,
    so every fraction compares the same seeds."""
    for r in runs:
        r["val_loss_natural"] = natural_loss(r["per_source"], shares)
    arms: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        arms.setdefault(r["arm"], []).append(r)
    out = []
    for key, label in LOSSES.items():
        out += [f"\n**{label}**\n",
                "| arm | seeds | loss | minus stratified (paired, 95% CI, n) | minus reweighted (paired, 95% CI, n) "
                "| minus random 2b (paired, 95% CI, n) | gap random b -> random 2b recovered (seeds) |",
                "|---|---:|---|---|---|---|---:|"]
        for arm, rs in arms.items():
            vs_strat = None if arm == "stratified_b_of_2b" else paired(runs, arm, "stratified_b_of_2b", key)
            vs_rw = None if arm == "reweighted" else paired(runs, arm, "reweighted", key)
            vs_2b = None if arm == "random_2b" else paired(runs, arm, "random_2b", key)
            (rb, r2b, a), n = _on_common_seeds(runs, ["random_b", "random_2b", arm], key)
            out.append(f"| {arm} | {len(rs)} | {_stats([r[key] for r in rs])} | {_interval(vs_strat)} "
                       f"| {_interval(vs_rw)} | {_interval(vs_2b)} | {_fraction(rb - a, rb - r2b, n)} |")
        for ceiling in [a for a in arms if a.startswith("ceiling_")]:
            (st, mm, ce), n = _on_common_seeds(runs, ["stratified_b_of_2b", "mean_match_pool", ceiling], key)
            out.append(f"\n{ceiling} vs the stratified control on the {n} seeds both have with mean_match_pool: "
                       f"{ce - st:+.3f}; last-layer features (mean_match_pool) {mm - st:+.3f}"
                       + (f", {_fraction(st - mm, st - ce, n)} of the ceiling's gain." if ce < st else
                          " (the ceiling gains nothing here)."))
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, of {sorted(ARMS)}")
    ap.add_argument("--seeds", default="0,1,2,3,4,5,6,7,8,9")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--model-size", default="tiny")
    ap.add_argument("--eval-per-source", type=int, default=32)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--summarize", action="store_true", help="print the tables of --out with the stored controls")
    ap.add_argument("--check-control", metavar="ARM", default=None,
                    help=f"rerun one stored control ({', '.join(CONTROLS)}) on seed 0 and compare")
    ap.add_argument("--match-error", action="store_true",
                    help="print how closely each fill matches the pool mean on 5 pools at initialization")
    args = ap.parse_args()
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    if args.match_error:
        match_errors(args)
        return
    if args.check_control:
        if args.check_control not in CONTROLS:
            ap.error(f"--check-control: expected one of {CONTROLS}, got {args.check_control!r}")
        check_control(args.check_control, args)
        return
    if args.summarize:
        mine = json.loads(args.out.read_text())
        controls = stored_controls(mine["settings"], ap.error)
        print(summarize(controls + mine["runs"], training_shares(args.max_length)))
        return
    names = [n for n in args.arms.split(",") if n]
    unknown = [n for n in names if n not in ARMS]
    if unknown:
        ap.error(f"unknown arm(s) {unknown}; arms: {sorted(ARMS)}")
    tokenizer, train, evald = _data(args)
    results = json.loads(args.out.read_text()) if args.out.is_file() else {"settings": {}, "runs": []}
    results["settings"] = {k: v for k, v in vars(args).items() if k not in ("summarize", "check_control")}
    results["settings"]["out"] = str(args.out)
    done = {(r["arm"], r["seed"]) for r in results["runs"]}
    for seed in [int(x) for x in args.seeds.split(",")]:
        for name in names:
            if (name, seed) in done:
                continue
            ga, overrides = ARMS[name]
            arm = quality.Arm(name, accumulation=ga, coreset=overrides)
            row = _run(arm, seed, args, tokenizer, train, evald)
            row["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
            print(json.dumps({k: v for k, v in row.items() if k not in ("per_source", "coreset")}), flush=True)
            # Re-read before appending: a second process may write other arms to the same file.
            results = json.loads(args.out.read_text()) if args.out.is_file() else results
            results["runs"].append(row)
            tmp = args.out.with_suffix(f".tmp{seed}{name}")
            tmp.write_text(json.dumps(results, indent=1, default=str))
            tmp.replace(args.out)


if __name__ == "__main__":
    main()
