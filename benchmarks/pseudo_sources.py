"""Pseudo-sources on the shipped mixture with its source labels hidden (issue 12, item 3).

(a) Recovery: how well k-means clusters of the model's hidden states recover the 14 real sources
    (adjusted Rand index), after 0, 10, 20 and 50 warm-up steps, for several k. The model is the
    one a pseudo-source arm trains during its warm-up (same seed, schedule, data order and
    warm-up draws), stopped at step 50; the rows embedded are a fixed random subset of the
    training set (--ari-rows), the clusters fitted on that subset.
(b) Quality at equal optimizer steps, the protocol of benchmarks/quality.py (tiny Llama, 100
    steps, b = 16, pool 2b, per-source validation loss), with the arms:

      random_b              plain training, batch b (the cheapest control)
      random_2b             batch 2b (2 x b accumulated)
      stratified_labeled    within_source="random" on the real sources (quality.py's control)
      stratified_pseudo     the same on pseudo-sources, labels hidden
      colm_labeled          the paper's selection (facility location, zo m=1) on the real sources
      colm_pseudo           the same on pseudo-sources, labels hidden
      colm_unlabeled        the paper's selection with labels hidden and no pseudo-sources: what
                            colm did before with unlabeled data (one source, plain facility location)

    Pseudo-source arms use --pseudo-sources (default 'auto') after --warmup steps. Labelled and
    pseudo arms of a pair share within_source, so the only difference is where the labels come from.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 nice .venv/bin/python benchmarks/pseudo_sources.py \\
        --seeds 0,1,2 --out benchmarks/results/pseudo_sources.json

Results are appended as they come (re-running skips what is there); --summarize prints the tables.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from quality import PAPER, paired, run_arm  # benchmarks/quality.py: the same protocol
from transformers import DataCollatorForSeq2Seq, TrainerCallback
from transformers.utils import logging as hf_logging

from colm.columns import SOURCE
from colm.data import default_mixture_dir, load_mixture, tokenize_mixture
from colm.integrations.pseudo_sources import adjusted_rand_index, kmeans
from colm.integrations.pseudo_sources.dataset_pass import embed_dataset
from colm.models.default import default_tokenizer

STRATIFIED = {"within_source": "random"}
#: name -> (gradient accumulation, CoresetConfig overrides or None, labels hidden?, pseudo-sources?)
ARMS: dict[str, tuple[int, dict[str, Any] | None, bool, bool]] = {
    "random_b": (1, None, False, False),
    "random_2b": (2, None, False, False),
    "stratified_labeled": (1, STRATIFIED, False, False),
    "stratified_pseudo": (1, STRATIFIED, True, True),
    "colm_labeled": (1, PAPER, False, False),
    "colm_pseudo": (1, PAPER, True, True),
    "colm_unlabeled": (1, PAPER, True, False),
}
#: (arm, minus arm): the paired differences the section reports.
CONTRASTS = [
    ("colm_pseudo", "colm_unlabeled"), ("colm_pseudo", "colm_labeled"), ("colm_pseudo", "random_b"),
    ("colm_pseudo", "random_2b"), ("stratified_pseudo", "stratified_labeled"), ("stratified_pseudo", "random_b"),
    ("colm_labeled", "random_b"), ("colm_unlabeled", "random_b"), ("stratified_labeled", "random_b"),
]


class StepStats(TrainerCallback):
    """Selection stats of every optimizer step (kept_small, overflow) read from the trainer."""

    def __init__(self, trainer: Any) -> None:
        self.trainer, self.steps = trainer, []

    def on_step_end(self, args, state, control, **kw):
        sel = self.trainer.last_selection
        if sel is not None:
            self.steps.append({"step": state.global_step, "kept_small": sel.stats.get("kept_small", 0.0),
                               "overflow": sel.stats.get("overflow", 0.0)})


def arm_recorder(true_sources: list[str], warmup: int) -> Callable[[Any], Callable[[], dict[str, Any]]]:
    """on_trainer hook for quality.run_arm: per-step stats, and the fitted pseudo-sources scored
    against the hidden labels."""

    def on_trainer(trainer: Any) -> Callable[[], dict[str, Any]]:
        stats = StepStats(trainer)
        trainer.add_callback(stats)

        def result() -> dict[str, Any]:
            after = [s for s in stats.steps if s["step"] > warmup]  # every selection arm, same steps
            out: dict[str, Any] = {}
            if after:
                out["kept_small_after_warmup"] = statistics.mean(s["kept_small"] for s in after)
                out["overflow_share_after_warmup"] = statistics.mean(s["overflow"] for s in after)
            ps = getattr(trainer, "pseudo_sources", None)
            if ps is not None and ps.state is not None:
                assignment = ps.state.assignment.tolist()
                rows = [i for i, c in enumerate(assignment) if c >= 0]
                out["pseudo_sources"] = ps.summary()
                out["ari_vs_hidden_sources"] = adjusted_rand_index([assignment[i] for i in rows],
                                                                   [true_sources[i] for i in rows])
            return out

        return result

    return on_trainer


class RecoveryProbe(TrainerCallback):
    """At the chosen steps, embed the subset, cluster it for each k and score it against the
    hidden labels; stop training after the last one."""

    def __init__(self, trainer, subset, labels, steps, ks, seed, collate, chunk, small_truth=None) -> None:
        self.trainer, self.subset, self.labels = trainer, subset, labels
        self.steps, self.ks, self.seed, self.collate, self.chunk = steps, ks, seed, collate, chunk
        self.small_truth = small_truth  # real sources below the mean size: report the overlap
        self.results: list[dict[str, Any]] = []

    def probe(self, step: int) -> None:
        started = time.perf_counter()
        vectors, supervised = embed_dataset(self.trainer.model, self.subset, self.collate, self.chunk)
        embed_s = time.perf_counter() - started
        rows = torch.nonzero(supervised).flatten().tolist()
        for k in self.ks:
            fitted = kmeans(vectors[rows], k, seed=self.seed)
            ari = adjusted_rand_index(fitted.assignment.tolist(), [self.labels[i] for i in rows])
            self.results.append({"seed": self.seed, "step": step, "k": k, "ari": ari, "sizes": fitted.sizes,
                                 "rows": len(rows), "embed_s": embed_s})
            if self.small_truth is not None:
                self.results[-1].update(overlap(fitted.assignment.tolist(), fitted.sizes,
                                                [self.labels[i] for i in rows], self.small_truth))
            print(json.dumps({k2: v for k2, v in self.results[-1].items() if k2 != "sizes"}), flush=True)

    def on_train_begin(self, args, state, control, **kw):
        if 0 in self.steps:
            self.probe(0)

    def on_step_end(self, args, state, control, **kw):
        if state.global_step in self.steps:
            self.probe(state.global_step)
        if state.global_step >= max(self.steps):
            control.should_training_stop = True


def overlap(assignment: list[int], sizes: list[int], labels: list[str], small_truth: set[str]) -> dict[str, Any]:
    """How the clusters the small-source rule keeps whole (below the mean cluster size) line up
    with the real sources it would keep whole."""
    small_clusters = {c for c, n in enumerate(sizes) if n * len(sizes) < sum(sizes)}
    in_small = [c in small_clusters for c in assignment]
    truly_small = [label in small_truth for label in labels]
    both = sum(a and b for a, b in zip(in_small, truly_small))
    return {
        "small_clusters": len(small_clusters),
        "rows_in_small_clusters": sum(in_small) / len(assignment),
        "rows_of_small_sources": sum(truly_small) / len(assignment),
        # of the real small sources' rows, the share a kept-whole cluster holds (recall) ...
        "small_source_rows_in_small_clusters": both / max(1, sum(truly_small)),
        # ... and of the kept-whole clusters' rows, the share from real small sources (precision)
        "small_cluster_rows_from_small_sources": both / max(1, sum(in_small)),
    }


def composition(seed, s, tokenizer, hidden, true_sources, args, small_eval) -> list[dict[str, Any]]:
    """The pseudo-source arms' own fit, reproduced (same warm-up, every row, k as in the arms):
    its ARI must equal theirs, and it says what the kept-whole clusters hold."""
    from collections import Counter

    from colm.integrations.pseudo_sources import auto_clusters
    from colm.selection.budget import small_sources

    pad = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    collate = lambda rows: pad([{k: r[k] for k in ("input_ids", "attention_mask", "labels")} for r in rows])  # noqa: E731
    k = auto_clusters(len(hidden), 2 * s["batch"]) if args.pseudo_sources == "auto" else args.pseudo_sources
    small_truth = {str(x) for x in small_sources("below_mean", Counter(true_sources))}
    probes: list[RecoveryProbe] = []

    def on_trainer(trainer):
        probe = RecoveryProbe(trainer, hidden, true_sources, [args.warmup], [k], seed, collate, s["batch"], small_truth)
        trainer.add_callback(probe)
        probes.append(probe)
        return None

    overrides = {**STRATIFIED, "pseudo_sources": args.pseudo_sources, "pseudo_source_warmup_steps": s["steps"]}
    run_arm("composition_probe", 1, overrides, seed, s, tokenizer, hidden, small_eval, on_trainer=on_trainer)
    return probes[0].results


def recovery(seed, s, tokenizer, hidden, true_sources, args, small_eval) -> list[dict[str, Any]]:
    """(a) for one seed: the pseudo-source arms' warm-up model, probed at args.ari_steps.
    ``small_eval``: a few validation rows (run_arm evaluates the stopped model; unused here)."""
    subset_ids = sorted(random.Random(1234).sample(range(len(hidden)), min(args.ari_rows, len(hidden))))
    subset = hidden.select(subset_ids)
    labels = [true_sources[i] for i in subset_ids]
    pad = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    collate = lambda rows: pad([{k: r[k] for k in ("input_ids", "attention_mask", "labels")} for r in rows])  # noqa: E731
    probes: list[RecoveryProbe] = []

    def on_trainer(trainer):
        probe = RecoveryProbe(trainer, subset, labels, args.ari_steps, args.ari_k, seed, collate, s["batch"])
        trainer.add_callback(probe)
        probes.append(probe)
        return None

    # The warm-up never ends inside this run (warm-up = the whole run): every step trains a
    # random b of its pool exactly as a pseudo-source arm's warm-up does.
    overrides = {**STRATIFIED, "pseudo_sources": args.pseudo_sources, "pseudo_source_warmup_steps": s["steps"]}
    run_arm("ari_probe", 1, overrides, seed, s, tokenizer, hidden, small_eval, on_trainer=on_trainer)
    return probes[0].results


def arm_overrides(name: str, args) -> dict[str, Any] | None:
    _, overrides, _, pseudo = ARMS[name]
    if overrides is None or not pseudo:
        return overrides
    return {**overrides, "pseudo_sources": args.pseudo_sources, "pseudo_source_warmup_steps": args.warmup}


def _mean_sd(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def tables(results: dict[str, Any]) -> str:
    out = []
    comp = results.get("composition", [])
    if comp:
        out += ["| seed | k | ARI (all rows) | kept-whole clusters | their share of rows | real small sources' share "
                "| of those rows, in kept-whole clusters | of kept-whole rows, from real small sources |",
                "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in comp:
            out.append(f"| {r['seed']} | {r['k']} | {r['ari']:.3f} | {r['small_clusters']} | {r['rows_in_small_clusters']:.0%} "
                       f"| {r['rows_of_small_sources']:.0%} | {r['small_source_rows_in_small_clusters']:.0%} "
                       f"| {r['small_cluster_rows_from_small_sources']:.0%} |")
        out.append("")
    sweep = results.get("recovery", [])
    if sweep:
        ks = sorted({r["k"] for r in sweep})
        out += ["| warm-up steps | " + " | ".join(f"ARI, k = {k}" for k in ks) + " |",
                "|---:|" + "---|" * len(ks)]
        for step in sorted({r["step"] for r in sweep}):
            cells = [_mean_sd([r["ari"] for r in sweep if r["step"] == step and r["k"] == k]) for k in ks]
            out.append(f"| {step} | " + " | ".join(cells) + " |")
        out.append("")
    runs = results.get("runs", [])
    if runs:
        out += ["| arm | seeds | val loss, mean over sources | val loss, worst source | kept whole / step (after step "
                f"{results['settings']['warmup']}) | steps with overflow | ARI vs hidden sources | s / step (median) |",
                "|---|---:|---|---|---:|---:|---|---:|"]
        for arm in ARMS:
            rs = [r for r in runs if r["arm"] == arm]
            if not rs:
                continue
            kept = [r["kept_small_after_warmup"] for r in rs if "kept_small_after_warmup" in r]
            over = [r["overflow_share_after_warmup"] for r in rs if "overflow_share_after_warmup" in r]
            ari = [r["ari_vs_hidden_sources"] for r in rs if "ari_vs_hidden_sources" in r]
            cells = [arm, str(len(rs)), _mean_sd([r["val_loss_mean"] for r in rs]),
                     _mean_sd([r["val_loss_worst"] for r in rs]),
                     f"{statistics.mean(kept):.1f}" if kept else "—", f"{statistics.mean(over):.0%}" if over else "—",
                     _mean_sd(ari) if ari else "—", f"{statistics.median(r['step_s'] for r in rs):.3f}"]
            out.append("| " + " | ".join(cells) + " |")
        out += ["", "| paired difference (per seed) | val loss, mean over sources: mean ± sd [95% CI] | "
                "worst source: mean ± sd [95% CI] |", "|---|---|---|"]
        for arm, base in CONTRASTS:
            cells = []
            for key in ("val_loss_mean", "val_loss_worst"):
                d = paired(runs, arm, base, key)
                cells.append("—" if d is None else
                             f"{d['mean']:+.3f} ± {d['sd']:.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}] (n={d['n']})")
            out.append(f"| {arm} − {base} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def save(results: dict[str, Any], path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1, default=str))
    tmp.replace(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, of {list(ARMS)}; 'none' for (a) only")
    ap.add_argument("--pseudo-sources", default="auto", help="'auto' or a number of clusters")
    ap.add_argument("--warmup", type=int, default=20, help="pseudo_source_warmup_steps of the pseudo arms")
    ap.add_argument("--ari-steps", default="0,10,20,50")
    ap.add_argument("--ari-k", default="8,14,29")
    ap.add_argument("--ari-rows", type=int, default=5000)
    ap.add_argument("--no-recovery", action="store_true", help="skip (a)")
    ap.add_argument("--composition", action="store_true",
                    help="also reproduce the pseudo arms' fit on every row and report what the kept-whole clusters hold")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--model-size", default="tiny")
    ap.add_argument("--eval-per-source", type=int, default=32)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--summarize", action="store_true", help="print the tables of --out (no training)")
    args = ap.parse_args()
    hf_logging.set_verbosity_error()
    results = json.loads(args.out.read_text()) if args.out.is_file() else {"settings": {}, "recovery": [], "runs": []}
    if args.summarize:
        print(tables(results))
        return
    args.pseudo_sources = args.pseudo_sources if args.pseudo_sources == "auto" else int(args.pseudo_sources)
    args.ari_steps = [int(x) for x in args.ari_steps.split(",")]
    args.ari_k = [int(x) for x in args.ari_k.split(",")]
    names = [] if args.arms == "none" else args.arms.split(",")
    unknown = [n for n in names if n not in ARMS]
    if unknown:
        ap.error(f"unknown arm(s) {unknown}; arms: {list(ARMS)}")
    s = {"steps": args.steps, "batch": args.batch, "lr": args.lr, "model_size": args.model_size}
    tokenizer = default_tokenizer()
    train, _ = tokenize_mixture(load_mixture(default_mixture_dir(), split="train"), tokenizer, max_length=args.max_length)
    true_sources = [str(x) for x in train[SOURCE]]
    hidden = train.remove_columns([SOURCE])
    evald, _ = tokenize_mixture(
        load_mixture(default_mixture_dir(), split="validation", max_examples_per_source=args.eval_per_source, seed=0),
        tokenizer, max_length=args.max_length,
    )
    small_eval = evald.select(range(0, len(evald), args.eval_per_source))
    results["settings"] = {**{k: v for k, v in vars(args).items() if k != "out"}, "out": str(args.out),
                           "torch": torch.__version__, "threads": torch.get_num_threads(), "train_rows": len(train)}
    for seed in [int(x) for x in args.seeds.split(",")]:
        if not args.no_recovery and not any(r["seed"] == seed for r in results["recovery"]):
            results["recovery"] += recovery(seed, s, tokenizer, hidden, true_sources, args, small_eval)
            save(results, args.out)
        if args.composition and not any(r["seed"] == seed for r in results.setdefault("composition", [])):
            results["composition"] += composition(seed, s, tokenizer, hidden, true_sources, args, small_eval)
            save(results, args.out)
        done = {(r["arm"], r["seed"]) for r in results["runs"]}
        for name in names:
            if (name, seed) in done:
                continue
            ga, _, hide, _ = ARMS[name]
            row = run_arm(name, ga, arm_overrides(name, args), seed, s, tokenizer, hidden if hide else train, evald,
                          on_trainer=arm_recorder(true_sources, args.warmup))
            row["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
            print(json.dumps({k: v for k, v in row.items() if k not in ("per_source", "coreset", "pseudo_sources")}),
                  flush=True)
            results["runs"].append(row)
            save(results, args.out)
    print(tables(results))


if __name__ == "__main__":
    main()
