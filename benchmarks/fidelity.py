"""Feature fidelity: how well does each selection method's coreset match the pool's TRUE gradient?

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/fidelity.py --out benchmarks/results/fidelity.json

Protocol (issue 3, item 6):

1. The shipped 14-source math mixture (train split), tokenized with max_length 128. By default
   every example is kept, so the real size imbalance (about 110x) decides which sources are
   "small"; ``--max-per-source`` caps it for a quicker run.
2. The tiny default Llama (~1.2M parameters) is trained briefly (AdamW, batch 32, lr 1e-3) on a
   random part of the data so that its gradients are those of a model that has started to learn,
   not of a random initialisation. Then it is frozen.
3. Pools of 128 examples are drawn uniformly at random (fixed seeds) from the examples NOT used
   for training. For each method a fresh ``CoresetSelector`` (default ``CoresetConfig``
   otherwise) picks 64; pools are fed in sequence with ``step`` = pool index, so the Adam history
   and the fresh SPSA directions evolve as they would in training.
4. Fidelity = cosine between the true gradient, over ALL trainable parameters, of the mean loss
   over the supervised tokens of the 64 selected rows (uniform weights, as the paper trains) and
   that of the whole pool of 128. One backward for the pool, one per subset: no per-example
   gradients are needed for the ground truth. The cosine restricted to the target matrix (the
   last layer's v_proj, what the features look at) is recorded too.

Methods: SPSA with the reference code's one fixed direction (m = 1, ``zo_fixed_z``), SPSA with
fresh directions every step and m in {1, 8, 32}, exact per-example gradients of the target,
last-token hidden states, and two random baselines: a uniform 64 of 128, and "random, small
sources kept" (small-source rows kept exactly as the selector keeps them, the remaining budget
filled uniformly at random from the large-source rows), which isolates what gradient matching
adds on top of the keep-small rule. Random methods are paired with the same pools.

SPSA emulation (to fit the time budget): on this model the LM head dominates a replay, so real
SPSA costs about 0.35 s per replay on one core and m = 32 (64 replays) takes ~22 s per pool. On
the first ``--real-zo-pools`` pools every zo method runs the real path (``gradient_features``,
which is what is timed); on the others its features are computed as the same formula with exact
directional derivatives, c_ij = g_i . z_j, from the "exact" per-example gradients and the very
directions ``gradient_features`` would draw (``zo_directions``), then passed through the
library's ``zo_features_from_coefficients``. The two agree to a row cosine of 0.999999 (recorded
per pool as ``zo_vs_emulated_row_cos``): with eps = 1e-3 the finite-difference error is
negligible, so the emulation changes the time, not the selection.

Threads: 1 by default. On the shared 2-core machine, under load from other jobs, a training
step ran 4-5x slower with 2 torch threads than with 1 (OpenMP threads waiting on each other).

Output: a JSON file with the setup, per-pool raw values and per-method summaries (mean with a 95%
t-interval, and the paired difference to the uniform random baseline), plus a markdown table on
stdout.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from scipy import stats as sstats
from transformers import DataCollatorForSeq2Seq

from colm import CoresetConfig, CoresetSelector, gradient_features
from colm.data import default_mixture_dir, load_mixture, tokenize_mixture
from colm.default_model import default_model, default_tokenizer
from colm.features.targets import find_target_parameters
from colm.features.zeroth_order import zo_directions, zo_features_from_coefficients

POOL = 128
BUDGET = 64

#: name -> CoresetConfig overrides; None marks a random baseline (no features, no selector).
#: "exact" comes first: its features feed the SPSA emulation of the zo methods.
METHODS: dict[str, dict[str, Any] | None] = {
    "exact": dict(feature="exact"),
    "zo m=1 fixed z (reference)": dict(feature="zo", zo_probes=1, zo_fixed_z=True),
    "zo m=1": dict(feature="zo", zo_probes=1),
    "zo m=8 (default before this experiment)": dict(feature="zo", zo_probes=8),
    "zo m=32": dict(feature="zo", zo_probes=32),
    "hidden": dict(feature="hidden"),
    "random": None,
    "random, small sources kept": None,
}


# ------------------------------------------------------------------------------------- helpers
class Rows:
    """The tokenized dataset as plain Python lists, so gathering a pool costs no Arrow round trip."""

    def __init__(self, ds) -> None:
        self.input_ids: list[list[int]] = ds["input_ids"]
        self.attention_mask: list[list[int]] = ds["attention_mask"]
        self.labels: list[list[int]] = ds["labels"]
        self.source: list[str] = ds["source"]

    def __len__(self) -> int:
        return len(self.source)

    def features(self, idx: Sequence[int]) -> list[dict[str, list[int]]]:
        return [
            {"input_ids": self.input_ids[i], "attention_mask": self.attention_mask[i],
             "labels": self.labels[i]}
            for i in idx
        ]


def subset_batch(batch: dict[str, torch.Tensor], rows: torch.Tensor) -> dict[str, torch.Tensor]:
    """Rows of a padded batch, with columns that are padding in every kept row dropped.

    Dropping them changes nothing in the loss (they carry label -100 and attention 0, and
    whatever side the padding is on, the causal mask keeps them from affecting real tokens when
    they are on the right; on the left, the attention mask does) but saves compute.
    """
    sub = {k: v[rows] for k, v in batch.items()}
    used = sub["attention_mask"].any(dim=0).nonzero(as_tuple=True)[0]
    lo, hi = int(used.min()), int(used.max()) + 1
    return {k: v[:, lo:hi] for k, v in sub.items()}


def true_gradient(model: torch.nn.Module, params: list[torch.nn.Parameter],
                  batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Flattened gradient (float64) of the mean NLL over the batch's supervised tokens.

    This is the loss a training step on exactly these rows would use (Hugging Face's causal-LM
    loss: mean over all positions with label != -100 after the shift).
    """
    loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                 labels=batch["labels"], use_cache=False).loss
    grads = torch.autograd.grad(loss, params)
    return torch.cat([g.reshape(-1) for g in grads]).double()


def emulate_zo(exact_feats: torch.Tensor, config: CoresetConfig, step: int) -> torch.Tensor:
    """SPSA features with exact directional derivatives: c_ij = g_i . z_j, then the library's own
    ``zo_features_from_coefficients`` with the same directions ``gradient_features`` would draw.

    Real SPSA differs only by the finite-difference error (O(eps^2) plus float32 rounding), which
    the run measures on the pools where both are computed.
    """
    d = exact_feats.shape[1]
    z = zo_directions(config, step, d)  # [m, d]
    c = exact_feats.double() @ z.double().T  # [n, m]
    return zo_features_from_coefficients(c.float(), config, step, d)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.dot(a, b) / (a.norm() * b.norm()).clamp_min(1e-300))


def mean_ci(values: Sequence[float], level: float = 0.95) -> dict[str, float]:
    """Mean with a Student-t confidence interval (pools are independent draws)."""
    x = np.asarray(values, dtype=np.float64)
    n = len(x)
    mean = float(x.mean())
    if n < 2:
        return {"mean": mean, "lo": float("nan"), "hi": float("nan"), "sd": float("nan"), "n": n}
    sd = float(x.std(ddof=1))
    half = float(sstats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "sd": sd, "n": n}


# ------------------------------------------------------------------------------------ the run
def train_briefly(model: torch.nn.Module, rows: Rows, idx: np.ndarray, collate: Callable,
                  steps: int, batch_size: int, lr: float, seed: int) -> list[float]:
    """A short AdamW run on ``idx`` (each example at most once), returning the loss curve."""
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    losses = []
    for s in range(steps):
        part = idx[s * batch_size:(s + 1) * batch_size]
        batch = collate(rows.features(part))
        loss = model(**batch, use_cache=False).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    for p in model.parameters():
        p.grad = None
    return losses


def summarize(per_pool: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, Any]]:
    """Per-method summaries of the raw per-pool values.

    Differences are paired (same pools): against uniform random (does selection beat chance?)
    and against "random, small sources kept" (does gradient matching add anything on top of the
    keep-small rule?), and between consecutive SPSA probe counts.
    """
    base = np.asarray(per_pool["random"]["cos"])
    keep = np.asarray(per_pool["random, small sources kept"]["cos"])
    summary: dict[str, dict[str, Any]] = {}
    for name, rec in per_pool.items():
        cos = np.asarray(rec["cos"])
        times = np.asarray(rec["time_s"][1:] or rec["time_s"] or [np.nan])  # 1st: warm-up
        summary[name] = {
            "cos": mean_ci(cos),
            "cos_target": mean_ci(rec["cos_target"]),
            "diff_vs_random": mean_ci(cos - base),
            "wins_vs_random": int((cos > base).sum()),
            "diff_vs_random_small_kept": mean_ci(cos - keep),
            "wins_vs_random_small_kept": int((cos > keep).sum()),
            "time_ms_median": float(np.median(times) * 1e3),
            "time_ms_mean": float(np.mean(times) * 1e3),
            "timed_pools": len(rec["time_s"]),
        }
        if rec.get("zo_vs_emulated_row_cos"):
            summary[name]["zo_vs_emulated_row_cos_mean"] = float(
                np.mean(rec["zo_vs_emulated_row_cos"]))
    pairs = [("zo m=1", "zo m=8 (default before this experiment)"), ("zo m=8 (default before this experiment)", "zo m=32"),
             ("zo m=1", "zo m=1 fixed z (reference)"), ("zo m=1", "exact"), ("zo m=1", "hidden")]
    summary["_paired"] = {
        f"{a} minus {b}": mean_ci(np.asarray(per_pool[a]["cos"]) - np.asarray(per_pool[b]["cos"]))
        for a, b in pairs if a in per_pool and b in per_pool
    }
    return summary


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    tokenizer = default_tokenizer()
    raw = load_mixture(default_mixture_dir(), split="train",
                       max_examples_per_source=args.max_per_source, seed=args.seed)
    ds, tok_stats = tokenize_mixture(raw, tokenizer, max_length=args.max_length)
    rows = Rows(ds)
    # Dataset-level sizes decide which sources are small (METHOD.md step 2).
    source_sizes = dict(sorted(tok_stats["per_source"].items()))
    print(f"[fidelity] {len(rows)} examples, {len(source_sizes)} sources "
          f"({time.perf_counter() - started:.0f}s)", file=sys.stderr, flush=True)
    collate = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100,
                                     return_tensors="pt")

    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(rows))
    n_train = args.train_steps * args.train_batch
    train_idx, pool_candidates = order[:n_train], order[n_train:]

    model = default_model(tokenizer, size="tiny", seed=args.seed)
    t0 = time.perf_counter()
    losses = train_briefly(model, rows, train_idx, collate, args.train_steps, args.train_batch,
                           args.lr, args.seed)
    train_s = time.perf_counter() - t0
    print(f"[fidelity] trained {args.train_steps} steps in {train_s:.0f}s: loss "
          f"{np.mean(losses[:10]):.3f} (first 10) -> {np.mean(losses[-10:]):.3f} (last 10)",
          file=sys.stderr, flush=True)
    for p in model.parameters():
        p.requires_grad_(True)  # frozen = never stepped again; grads are still needed
    params = [p for p in model.parameters() if p.requires_grad]
    n_params = sum(p.numel() for p in params)
    target = find_target_parameters(model, None)
    target_names = list(target)
    d = sum(p.numel() for p in target.values())
    topk = None if args.topk_dims is None or args.topk_dims >= d else args.topk_dims
    # Where the target matrix sits in the flattened all-parameter gradient.
    offsets, off = {}, 0
    for name, p in model.named_parameters():
        if p.requires_grad:
            offsets[id(p)] = (off, off + p.numel())
            off += p.numel()
    target_spans = [offsets[id(p)] for p in target.values()]

    def target_part(g: torch.Tensor) -> torch.Tensor:
        return torch.cat([g[a:b] for a, b in target_spans])

    selectors: dict[str, CoresetSelector] = {}
    configs: dict[str, dict[str, Any]] = {}
    for name, overrides in METHODS.items():
        if overrides is not None:
            cfg = CoresetConfig(topk_dims=topk, seed=args.seed, **overrides)
            selectors[name] = CoresetSelector(cfg, source_sizes)
            configs[name] = cfg.to_dict()
    small = set(next(iter(selectors.values())).small_source_names) if selectors else set()

    per_pool: dict[str, dict[str, list[float]]] = {
        name: {"cos": [], "cos_target": [], "time_s": [], "match_error": []} for name in METHODS
    }
    pool_info: list[dict[str, Any]] = []

    def assemble(n_done: int) -> dict[str, Any]:
        """Summaries and raw values of the first n_done pools."""
        summary = summarize(per_pool)

        return {
            "setup": {
                "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
                "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
                "torch": torch.__version__,
                "threads": args.threads,
                "args": vars(args),
                "pool": POOL,
                "budget": BUDGET,
                "n_examples": len(rows),
                "source_sizes": source_sizes,
                "small_sources": sorted(small),
                "n_params": n_params,
                "target": target_names,
                "target_numel_d": d,
                "topk_dims_used": topk,
                "train_seconds": train_s,
                "train_loss_first10": float(np.mean(losses[:10])),
                "train_loss_last10": float(np.mean(losses[-10:])),
                "train_losses": losses,
                "configs": configs,
                "total_seconds": time.perf_counter() - started,
                "pools_done": n_done,
            },
            "summary": summary,
            "pools": pool_info,
            "per_pool": per_pool,
        }

    t_pools = time.perf_counter()
    for p in range(args.pools):
        prng = np.random.default_rng([args.seed, 1, p])
        idx = prng.choice(pool_candidates, size=POOL, replace=False)
        sources = [rows.source[i] for i in idx]
        batch = collate(rows.features(idx))
        g_pool = true_gradient(model, params, batch)
        g_pool_t = target_part(g_pool)
        is_small = torch.tensor([s in small for s in sources])
        pool_info.append({"pool": p, "n_small": int(is_small.sum())})
        exact_feats: torch.Tensor | None = None  # set by "exact", which METHODS lists first

        for name, overrides in METHODS.items():
            stats: dict[str, float] = {}
            elapsed: float | None = 0.0
            t = time.perf_counter()
            if overrides is None:
                gen = torch.Generator().manual_seed(args.seed * 100_003 + p)
                if name == "random":
                    chosen = torch.randperm(POOL, generator=gen)[:BUDGET]
                else:
                    # Keep small sources exactly as the selector does, then fill at random.
                    kept = is_small.nonzero(as_tuple=True)[0]
                    large = (~is_small).nonzero(as_tuple=True)[0]
                    if len(kept) >= BUDGET:
                        chosen = kept[torch.randperm(len(kept), generator=gen)[:BUDGET]]
                    else:
                        fill = large[torch.randperm(len(large), generator=gen)[:BUDGET - len(kept)]]
                        chosen = torch.cat([kept, fill])
                elapsed = time.perf_counter() - t
            else:
                sel = selectors[name]
                cfg = sel.config
                if cfg.feature == "zo" and p >= args.real_zo_pools:
                    # Emulated SPSA (see module docstring): same directions, exact directional
                    # derivatives. Not timed: the time reported is the real path's.
                    feats = emulate_zo(exact_feats, cfg, p)
                    elapsed = None
                else:
                    feats = gradient_features(model, batch, cfg, step=p)
                    if cfg.feature == "exact":
                        exact_feats = feats
                    elif cfg.feature == "zo":
                        emu = emulate_zo(exact_feats, cfg, p)
                        rec_agree = per_pool[name].setdefault("zo_vs_emulated_row_cos", [])
                        rec_agree.append(float(torch.nn.functional.cosine_similarity(
                            feats.double(), emu.double(), dim=1).mean()))
                selection = sel.select(feats, sources, BUDGET)
                if elapsed is not None:
                    elapsed = time.perf_counter() - t
                chosen = selection.indices
                stats = selection.stats
            chosen = torch.sort(chosen).values
            g_sub = true_gradient(model, params, subset_batch(batch, chosen))
            rec = per_pool[name]
            rec["cos"].append(cosine(g_sub, g_pool))
            rec["cos_target"].append(cosine(target_part(g_sub), g_pool_t))
            if elapsed is not None:
                rec["time_s"].append(elapsed)
            rec["match_error"].append(float(stats.get("match_error", float("nan"))))
        if (p + 1) % 10 == 0 or p == 0:
            print(f"[fidelity] pool {p + 1}/{args.pools} "
                  f"({time.perf_counter() - t_pools:.0f}s)", file=sys.stderr, flush=True)
            if (p + 1) % 10 == 0 and p + 1 < args.pools:
                # Partial results, so a run cut short still leaves usable numbers behind.
                save(args.out, assemble(p + 1))
    return assemble(args.pools)


def save(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, default=str) + "\n")


def markdown(result: dict[str, Any]) -> str:
    """The summary table as markdown."""
    lines = [
        "| method | cosine to pool gradient, mean [95% CI] | paired diff vs random [95% CI] "
        "| wins vs random | paired diff vs random, small sources kept [95% CI] "
        "| cosine on target v_proj only | time per selection (ms, median) |",
        "|---|---|---|---:|---|---|---:|",
    ]
    n = result["setup"]["pools_done"]
    for name, s in result["summary"].items():
        if name.startswith("_"):
            continue
        c, dr, ct = s["cos"], s["diff_vs_random"], s["cos_target"]
        dk = s["diff_vs_random_small_kept"]
        keep = "—" if name == "random, small sources kept" else (
            f"{dk['mean']:+.4f} [{dk['lo']:+.4f}, {dk['hi']:+.4f}]")
        diff = "—" if name == "random" else f"{dr['mean']:+.4f} [{dr['lo']:+.4f}, {dr['hi']:+.4f}]"
        wins = "—" if name == "random" else f"{s['wins_vs_random']}/{n}"
        lines.append(
            f"| {name} | {c['mean']:.4f} [{c['lo']:.4f}, {c['hi']:.4f}] | {diff} | {wins} "
            f"| {keep} "
            f"| {ct['mean']:.4f} [{ct['lo']:.4f}, {ct['hi']:.4f}] | {s['time_ms_median']:.1f} |"
        )
    paired = result["summary"].get("_paired", {})
    if paired:
        lines.append("")
    for pair, dv in paired.items():
        lines.append(f"- paired: {pair}: {dv['mean']:+.4f} [{dv['lo']:+.4f}, {dv['hi']:+.4f}]")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/fidelity.json"))
    ap.add_argument("--pools", type=int, default=50)
    ap.add_argument("--train-steps", type=int, default=100)
    ap.add_argument("--train-batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--max-per-source", type=int, default=None,
                    help="cap examples per source (default: all, the real imbalance)")
    ap.add_argument("--topk-dims", type=lambda s: None if s.lower() == "none" else int(s),
                    default=2560, help="coordinates kept per source; >= d or 'none' keeps all")
    ap.add_argument("--real-zo-pools", type=int, default=3,
                    help="pools on which the zo methods run the real SPSA path (timed, and "
                         "compared with the emulation used on the other pools)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1 by default: on the shared 2-core machine, 2 threads "
                         "were 4-5x slower than 1 under load, from OpenMP contention)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resummarize", action="store_true",
                    help="recompute the summaries of an existing --out file from its raw "
                         "per-pool values (no model run) and print the table")
    args = ap.parse_args(argv)
    if args.resummarize:
        result = json.loads(args.out.read_text())
        result["summary"] = summarize(result["per_pool"])
        save(args.out, result)
        print(markdown(result))
        return
    result = run(args)
    save(args.out, result)
    print(markdown(result))
    print(f"\nwrote {args.out} in {result['setup']['total_seconds']:.0f}s")


if __name__ == "__main__":
    main()
