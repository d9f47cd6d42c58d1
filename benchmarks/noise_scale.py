"""The gradient noise scale on the labs: is the two-size estimate right, and does it predict?

    lab       (b) the tiny lab (embedded tiny Llama, shipped math mixture, batch 16, lr 3e-3,
              cosine, 100 steps: benchmarks/quality.py's random_b arm) trained with
              NoiseScaleCallback(every=1, split=True). Every --probe-every steps, at the
              weights of that step: B_simple from full per-example gradients (torch.func) of
              --rows random training rows, with a bootstrap interval over the rows; the same from
              the last decoder block's parameters only and from colm's default feature parameters
              (the last block's value projection); and the two-size estimate (halves of 8 of a
              batch of 16) averaged over --repeats random batches at the same weights, with a
              bootstrap interval over the repeats. The callback's moving average is recorded too.
    relation  (c) the measured gain of random 2b over random b at equal steps (stored quality
              runs) next to B_simple / b from `lab`, and McCandlish et al.'s prediction of the
              step ratio (1 + B/b) / (1 + B/2b).
    cost      the callback's step-time cost: the same run with and without it (accumulation 2,
              and one process with the split), median step time of --repeats alternating runs,
              as ratios.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python benchmarks/noise_scale.py lab \
        --seeds 0,1,2 --out benchmarks/results/noise_scale_lab.json
    .venv/bin/python benchmarks/noise_scale.py summarize --lab benchmarks/results/noise_scale_lab.json
    .venv/bin/python benchmarks/noise_scale.py relation --lab benchmarks/results/noise_scale_lab.json
    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python benchmarks/noise_scale.py cost \
        --out benchmarks/results/noise_scale_cost.json

The pretrained lab on the CPU (`make pretrained-lab`) measures B_simple on its accumulate2 arm;
benchmarks/pretrained/tables.py tabulates it. On a GPU, benchmarks/pretrained.py records it too:

    python benchmarks/pretrained.py --arms random_b,random_2b --seeds 0,1,2 --steps 400 --batch 16 \
        --max-length 512 --dtype bf16 --noise-scale-every 10 --out benchmarks/results/pretrained_noise.json
    .venv/bin/python benchmarks/noise_scale.py relation --pretrained benchmarks/results/pretrained_noise.json
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.utils import logging as hf_logging

sys.path.insert(0, str(Path(__file__).parent))

from colm.diagnostics.noise_scale import (  # noqa: E402
    per_example_estimates,
    pooled_b_simple,
    two_size_estimates,
)
from colm.features.full import per_example_summed_nll_gradients, trainable_parameters  # noqa: E402
from colm.features.structure import find_decoder_stack  # noqa: E402
from colm.features.targets import find_target_parameters  # noqa: E402
from colm.integrations.noise_scale import NoiseScaleCallback  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def ratio_interval(g2: float, g2_se: float, trace: float, trace_se: float) -> list[float]:
    """A conservative 95% interval of trace / g2 from normal intervals of each: the ratio of
    their ends (upper end inf while g2's interval reaches 0)."""
    g_lo, g_hi = g2 - 1.96 * g2_se, g2 + 1.96 * g2_se
    t_lo, t_hi = max(0.0, trace - 1.96 * trace_se), trace + 1.96 * trace_se
    return [t_lo / g_hi if g_hi > 0 else math.inf, t_hi / g_lo if g_lo > 0 else math.inf]


def gram_estimates(gram: torch.Tensor, counts: torch.Tensor) -> tuple[float, float]:
    """(|G|^2, tr(Sigma)) of the rows weighted by `counts` (0/1), from their Gram matrix
    (per_example_estimates' formulas, without touching the long gradient vectors)."""
    n = float(counts.sum())
    mean_sq = float(counts @ gram @ counts) / n**2
    trace = (float(counts @ gram.diagonal()) - n * mean_sq) / (n - 1)
    return mean_sq - trace / n, trace


def jackknife(gram: torch.Tensor) -> tuple[float, float]:
    """Jackknife standard errors of the per-example |G|^2 and tr(Sigma) estimates (both
    U-statistics: every leave-one-out estimate is unbiased too)."""
    n = gram.shape[0]
    loo = []
    for i in range(n):
        counts = torch.ones(n, dtype=torch.float64)
        counts[i] = 0
        loo.append(gram_estimates(gram, counts))
    out = []
    for k in range(2):
        values = [v[k] for v in loo]
        mean = statistics.fmean(values)
        out.append(math.sqrt((n - 1) / n * sum((v - mean) ** 2 for v in values)))
    return out[0], out[1]


class Probe(TrainerCallback):
    """At every `every`-th step's start (the weights that step's gradient is taken at): the
    per-example and the repeated two-size estimates."""

    def __init__(self, lab: Any, collate: Any, every: int, rows: int, repeats: int, half: int, seed: int) -> None:
        self.lab, self.collate, self.every, self.rows, self.repeats, self.half = lab, collate, every, rows, repeats, half
        self.gen = torch.Generator().manual_seed(1000 + seed)
        self.records: list[dict[str, Any]] = []

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0:
            self.records.append(self.measure(model, state.global_step))

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == args.max_steps and state.global_step % self.every == 0:
            self.records.append(self.measure(model, state.global_step))  # the final weights

    def batch(self, n: int) -> dict[str, torch.Tensor]:
        picks = torch.randperm(len(self.lab.train), generator=self.gen)[:n].tolist()
        rows = [{k: self.lab.train[i][k] for k in ("input_ids", "labels")} for i in picks]
        return self.collate(rows)

    def measure(self, model: Any, step: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        was_training = model.training
        model.eval()  # no dropout in the tiny model; eval keeps vmap's per-row calls identical
        params = trainable_parameters(model)
        batch = self.batch(self.rows)
        sums, counts = per_example_summed_nll_gradients(model, batch, params)
        # each row's share of the token-averaged loss: its summed NLL over the mean tokens per row
        grads = (sums / counts.double().mean().float()).double()  # [rows, P]
        columns = column_ranges(params)
        last = find_decoder_stack(model).last_prefix
        subsets = {
            "full": list(params),
            "last_block": [n for n in params if n.startswith(last)],
            "feature_params": list(find_target_parameters(model)),
        }
        record: dict[str, Any] = {"step": step}
        for name, names in subsets.items():
            cols = torch.cat([torch.arange(*columns[n]) for n in names])
            sub = grads[:, cols]
            gram = sub @ sub.T  # [rows, rows]
            g2, trace = gram_estimates(gram, torch.ones(len(gram), dtype=torch.float64))
            if not self.records and name == "full":  # once: the Gram route is per_example_estimates
                direct = per_example_estimates(sub)
                assert math.isclose(direct[1], trace, rel_tol=1e-6), (direct, trace)
            g2_se, trace_se = jackknife(gram)
            record[f"per_example_{name}"] = {
                "b_simple": trace / g2 if g2 > 0 else math.inf, "g2": g2, "trace": trace, "g2_se": g2_se,
                "trace_se": trace_se, "ci": ratio_interval(g2, g2_se, trace, trace_se), "params": int(sub.shape[1])}
        # the two-size estimate at the same weights, repeated on fresh batches
        model.train()
        g2s, traces = [], []
        for _ in range(self.repeats):
            b = self.batch(2 * self.half)
            halves = [{k: v[i * self.half:(i + 1) * self.half] for k, v in b.items()} for i in range(2)]
            tokens = [float((h["labels"][:, 1:] != -100).sum()) for h in halves]
            vecs = []
            for h in halves:
                model.zero_grad()
                out = model(**h)
                # the Trainer's token-normalized loss over the whole batch of 2*half rows
                (out.loss * tokens[len(vecs)] / sum(tokens)).backward()
                vecs.append(torch.cat([p.grad.flatten().double() for p in params.values()]))
            model.zero_grad()
            small = vecs[0] / (tokens[0] / sum(tokens))
            big = vecs[0] + vecs[1]
            shares = [t / sum(tokens) for t in tokens]
            b_big = 1 / sum(s * s / self.half for s in shares)
            g2, trace = two_size_estimates(self.half, float(small.square().sum()), b_big, float(big.square().sum()))
            g2s.append(g2)
            traces.append(trace)
        g2m, trm = statistics.fmean(g2s), statistics.fmean(traces)
        g2_se, trace_se = (statistics.stdev(v) / math.sqrt(len(v)) for v in (g2s, traces))
        record["two_size"] = {"b_simple": trm / g2m if g2m > 0 else math.inf, "g2": g2m, "trace": trm,
                              "g2_se": g2_se, "trace_se": trace_se, "ci": ratio_interval(g2m, g2_se, trm, trace_se),
                              "repeats": self.repeats, "g2_each": g2s, "trace_each": traces}
        record["seconds"] = time.perf_counter() - t0
        model.train(was_training)
        print(json.dumps({"step": step, **{k: round(v["b_simple"], 1) for k, v in record.items()
                                           if isinstance(v, dict)}}), flush=True)
        return record


def column_ranges(params: dict[str, torch.nn.Parameter]) -> dict[str, tuple[int, int]]:
    out, start = {}, 0
    for name, p in params.items():
        out[name] = (start, start + p.numel())
        start += p.numel()
    return out


def tiny_lab(batch: int, lr: float, steps: int) -> Any:
    from quality import make_lab

    from colm.data import default_mixture_dir, load_mixture, tokenize_mixture
    from colm.models.default import default_tokenizer

    tokenizer = default_tokenizer()
    train, _ = tokenize_mixture(load_mixture(default_mixture_dir(), split="train"), tokenizer, max_length=128)
    evald, _ = tokenize_mixture(load_mixture(default_mixture_dir(), split="validation", max_examples_per_source=32,
                                             seed=0), tokenizer, max_length=128)
    return make_lab({"steps": steps, "batch": batch, "lr": lr, "model_size": "tiny"}, tokenizer, train, evald)


def run_lab(args: argparse.Namespace) -> None:
    from transformers import DataCollatorForSeq2Seq

    from colm.compare.arms import Arm
    from colm.compare.run import run_arm

    lab = tiny_lab(args.batch, args.lr, args.steps)
    collate = DataCollatorForSeq2Seq(lab.tokenizer, padding=True, label_pad_token_id=-100)
    results: dict[str, Any] = {"settings": {**vars(args), "out": str(args.out), "torch": torch.__version__,
                                            "threads": torch.get_num_threads()}, "runs": []}
    for seed in [int(s) for s in args.seeds.split(",")]:
        torch.manual_seed(seed)
        callback = NoiseScaleCallback(every=1, split=True)
        probe = Probe(lab, collate, args.probe_every, args.rows, args.repeats, args.batch // 2, seed)
        row = run_arm(Arm("random_b", accumulation=1, coreset=None), seed, lab, args.steps,
                      callbacks=[probe, callback])
        results["runs"].append({
            "seed": seed, "val_loss_natural": row.get("val_loss_natural"), "val_loss_mean": row.get("val_loss_mean"),
            "probes": probe.records, "callback": callback.history,
        })
        args.out.write_text(json.dumps(results, indent=1, default=str))


def pooled(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Several measurements (seeds, steps) of one estimator pooled: the mean |G|^2 and tr(Sigma)
    estimates, their standard errors (independent measurements) and B_simple with its interval."""
    k = len(records)
    g2 = statistics.fmean(r["g2"] for r in records)
    trace = statistics.fmean(r["trace"] for r in records)
    g2_se = math.sqrt(sum(r["g2_se"] ** 2 for r in records)) / k
    trace_se = math.sqrt(sum(r["trace_se"] ** 2 for r in records)) / k
    b = trace / g2 if g2 > 0 and trace > 0 else math.inf
    return {"b_simple": b, "ci": ratio_interval(g2, g2_se, trace, trace_se), "g2": g2, "trace": trace}


ESTIMATORS = (("per_example_full", "per-example, all parameters"), ("two_size", "two-size (8 of 16, 32 batches)"),
              ("per_example_last_block", "per-example, last block"),
              ("per_example_feature_params", "per-example, feature parameters (last v_proj)"))


def summarize_lab(args: argparse.Namespace) -> None:
    """Markdown: per probed step, every estimator pooled over seeds, with intervals; then pooled
    over the later steps, and the last-layer estimates' ratio to the full one."""
    lab = json.loads(args.lab.read_text())
    runs = lab["runs"]
    fmt = (lambda x: f"{x['b_simple']:.0f} [{x['ci'][0]:.0f}, "
           f"{'inf' if math.isinf(x['ci'][1]) else format(x['ci'][1], '.0f')}]")
    print(f"{len(runs)} seeds ({', '.join(str(r['seed']) for r in runs)}); B_simple [95% interval], pooled over seeds")
    print("\n| step | " + " | ".join(t for _, t in ESTIMATORS) + " |")
    print("|---|" + "---|" * len(ESTIMATORS))
    steps = sorted({p["step"] for r in runs for p in r["probes"]})
    for step in steps:
        probes = [p for r in runs for p in r["probes"] if p["step"] == step]
        print(f"| {step} | " + " | ".join(fmt(pooled([p[k] for p in probes])) for k, _ in ESTIMATORS) + " |")
    for lo, hi in ((10, 40), (50, 100)):
        probes = [p for r in runs for p in r["probes"] if lo <= p["step"] <= hi]
        cells = {k: pooled([p[k] for p in probes]) for k, _ in ESTIMATORS}
        print(f"| {lo}-{hi} pooled | " + " | ".join(fmt(cells[k]) for k, _ in ESTIMATORS) + " |")
        full = cells["per_example_full"]["b_simple"]
        print(f"\nsteps {lo}-{hi}: two-size / per-example {cells['two_size']['b_simple'] / full:.2f}; last block / "
              f"all parameters {cells['per_example_last_block']['b_simple'] / full:.2f}; feature parameters / all "
              f"{cells['per_example_feature_params']['b_simple'] / full:.2f}")
    callback = [h for r in runs for h in r["callback"]]
    print("\nthe callback during training (every step, halves of 8 of the step's batch):")
    for lo, hi in ((10, 40), (50, 100)):
        at = [h for h in callback if lo <= h["step"] <= hi and h["step"] % 10 == 0]
        g2, tr = statistics.fmean(h["grad_sq_step"] for h in at), statistics.fmean(h["trace_step"] for h in at)
        print(f"  at the probed steps {lo}-{hi} ({len(at)} single measurements): ratio of means "
              f"{tr / g2 if g2 > 0 else math.inf:.0f}")
    for lo, hi in ((0, 9), (10, 39), (40, 69), (70, 99)):
        part = [h for h in callback if lo <= h["step"] <= hi]
        g2s, trs = [h["grad_sq_step"] for h in part], [h["trace_step"] for h in part]
        plain = statistics.fmean(trs) / statistics.fmean(g2s)
        print(f"  steps {lo}-{hi}: pooled (median of means) {pooled_b_simple(g2s, trs):.0f}, plain ratio of "
              f"means {plain:.0f} ({len(part)} measurements; largest |G_big|^2 "
              f"{max(h['grad_sq_big'] for h in part):.3g}, median {statistics.median(h['grad_sq_big'] for h in part):.3g})")


def paired_gain(runs: list[dict[str, Any]], key: str) -> tuple[float, float, int]:
    """Mean over seeds of random_b minus random_2b (positive: 2b is better), its 95% t half-width
    and the number of paired seeds."""
    by: dict[str, dict[int, float]] = {}
    for r in runs:
        if r["arm"] in ("random_b", "random_2b") and r.get("budget", "steps") == "steps" \
                and r.get("steps", 100) == 100 and r.get(key) is not None:
            by.setdefault(r["arm"], {})[r["seed"]] = r[key]
    seeds = sorted(set(by.get("random_b", {})) & set(by.get("random_2b", {})))
    gains = [by["random_b"][s] - by["random_2b"][s] for s in seeds]
    if len(gains) < 2:
        return (gains[0] if gains else math.nan), math.nan, len(gains)
    from scipy import stats as sstats

    half = float(sstats.t.ppf(0.975, len(gains) - 1)) * statistics.stdev(gains) / math.sqrt(len(gains))
    return statistics.fmean(gains), half, len(gains)


def relation_table(curve: dict[int, list[float]], b: int) -> list[str]:
    """B_simple over training (mean over seeds) next to b and the step worth of 2b."""
    lines = ["| step | B_simple (pooled over seeds) | B / b | one step of 2b is worth (1+B/b)/(1+B/2b) steps of b |",
             "|---|---:|---:|---:|"]
    for step in sorted(curve):
        bs = statistics.fmean(curve[step])
        lines.append(f"| {step} | {bs:.0f} | {bs / b:.1f} | {(1 + bs / b) / (1 + bs / (2 * b)):.2f} |")
    return lines


def relation(args: argparse.Namespace) -> None:
    if args.pretrained is not None:
        data = json.loads(args.pretrained.read_text())
        runs, b = data["runs"], data["settings"]["batch"]
        windows: dict[int, tuple[list[float], list[float]]] = {}
        for r in runs:
            if r["arm"] == "random_b" and r.get("noise_scale"):
                for step, g2, trace, *_ in r["noise_scale"]["per_step"]:
                    window = windows.setdefault(step // args.every * args.every, ([], []))
                    window[0].append(g2)
                    window[1].append(trace)
        # each window of --every steps pools its measurements over steps and seeds
        curve = {step: [pooled_b_simple(*pair)] for step, pair in windows.items()}
        if not curve:
            raise SystemExit(f"{args.pretrained}: no random_b run with noise_scale; train with "
                             "benchmarks/pretrained.py --arms random_b,random_2b --noise-scale-every 10")
        title = (f"pretrained lab ({args.pretrained}), b = {b}; B_simple: random_b's two-size estimates, "
                 f"pooled over seeds and windows of {args.every} steps")
    else:
        lab = json.loads(args.lab.read_text())
        b = lab["settings"]["batch"]
        runs = []
        for path in args.quality:
            runs += json.loads(Path(path).read_text())["runs"]
        from quality import training_rows, with_natural

        runs = with_natural(runs, training_rows(128))
        by_step: dict[int, list[dict[str, Any]]] = {}
        for run in lab["runs"]:
            for p in run["probes"]:
                by_step.setdefault(p["step"], []).append(p["per_example_full"])
        curve = {step: [pooled(records)["b_simple"]] for step, records in by_step.items()}  # pooled over seeds
        title = f"tiny lab, b = {b}; B_simple: full per-example gradients ({args.lab})"
    print(title)
    for key in ("val_loss_natural", "val_loss_mean"):
        gain, half, n = paired_gain(runs, key)
        print(f"  gain of random 2b over random b at equal steps ({key}): {gain:+.3f} +- {half:.3f} ({n} seeds)")
    print()
    print("\n".join(relation_table(curve, b)))


class TrainingClock(TrainerCallback):
    """Wall and process CPU seconds from on_train_begin to on_train_end (training only)."""

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = (time.perf_counter(), time.process_time())

    def on_train_end(self, args, state, control, **kwargs):
        self.wall = time.perf_counter() - self.start[0]
        self.cpu = time.process_time() - self.start[1]


def run_cost(args: argparse.Namespace) -> None:
    """Training time with the callback over without it: each repeat runs both (alternating which
    goes first, so drift hits both), the ratio is of the medians over repeats. The time covers
    every step, measured or not; `every 1` gives the cost of a measured step. Process CPU time
    (one thread) is the headline: on a shared machine wall time mostly measures the neighbours."""
    from colm.compare.arms import Arm
    from colm.compare.run import run_arm

    torch.set_num_threads(1)
    lab = tiny_lab(args.batch, args.lr, args.steps)
    cases = {"accumulation 2": (Arm("random_2b", accumulation=2, coreset=None), False),
             "split (accumulation 1)": (Arm("random_b", accumulation=1, coreset=None), True)}
    out: dict[str, Any] = {"settings": {**vars(args), "out": str(args.out), "torch": torch.__version__,
                                        "threads": torch.get_num_threads()}, "cases": {}}
    for name, (arm, split) in cases.items():
        for every in args.every:
            times: dict[str, dict[str, list[float]]] = {m: {"cpu": [], "wall": []} for m in ("off", "on")}
            for rep in range(args.repeats):
                for mode in (("off", "on") if rep % 2 == 0 else ("on", "off")):
                    clock = TrainingClock()
                    callbacks = [clock] + ([NoiseScaleCallback(every=every, split=split)] if mode == "on" else [])
                    run_arm(arm, 0, lab, args.steps, evaluate=False, callbacks=callbacks)
                    times[mode]["cpu"].append(clock.cpu)
                    times[mode]["wall"].append(clock.wall)
            ratio = {k: statistics.median(times["on"][k]) / statistics.median(times["off"][k]) for k in ("cpu", "wall")}
            out["cases"][f"{name}, every {every}"] = {"ratio_cpu": ratio["cpu"], "ratio_wall": ratio["wall"],
                                                      "seconds": times}
            print(f"{name}, every {every}: CPU time ratio {ratio['cpu']:.3f} (median of {args.repeats}: "
                  f"{statistics.median(times['on']['cpu']):.2f} s vs {statistics.median(times['off']['cpu']):.2f} s "
                  f"for {args.steps} steps); wall ratio {ratio['wall']:.3f}", flush=True)
            args.out.write_text(json.dumps(out, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    lab = sub.add_parser("lab")
    lab.add_argument("--seeds", default="0,1,2")
    lab.add_argument("--steps", type=int, default=100)
    lab.add_argument("--batch", type=int, default=16)
    lab.add_argument("--lr", type=float, default=3e-3)
    lab.add_argument("--probe-every", type=int, default=10)
    lab.add_argument("--rows", type=int, default=64)
    lab.add_argument("--repeats", type=int, default=32)
    lab.add_argument("--out", type=Path, default=RESULTS / "noise_scale_lab.json")
    rel = sub.add_parser("relation")
    rel.add_argument("--lab", type=Path, default=RESULTS / "noise_scale_lab.json")
    summ = sub.add_parser("summarize")
    summ.add_argument("--lab", type=Path, default=RESULTS / "noise_scale_lab.json")
    rel.add_argument("--pretrained", type=Path, default=None,
                     help="benchmarks/pretrained.py's --out (random_b and random_2b with --noise-scale-every)")
    rel.add_argument("--every", type=int, default=10, help="with --pretrained: the table's step spacing")
    rel.add_argument("--quality", nargs="+", default=[
        str(RESULTS / n) for n in ("quality_runs.json", "quality_random_b_more_a_runs.json",
                                   "quality_random_b_more_b_runs.json", "quality_random_b_more_c_runs.json")])
    cost = sub.add_parser("cost")
    cost.add_argument("--steps", type=int, default=30)
    cost.add_argument("--batch", type=int, default=16)
    cost.add_argument("--lr", type=float, default=3e-3)
    cost.add_argument("--every", type=int, nargs="+", default=[10, 1])
    cost.add_argument("--repeats", type=int, default=5)
    cost.add_argument("--out", type=Path, default=RESULTS / "noise_scale_cost.json")
    args = ap.parse_args()
    hf_logging.set_verbosity_error()
    {"lab": run_lab, "summarize": summarize_lab, "relation": relation, "cost": run_cost}[args.command](args)


if __name__ == "__main__":
    main()
