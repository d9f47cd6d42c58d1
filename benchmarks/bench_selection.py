"""Selection speed: facility location alone and the whole CoresetSelector.select().

Usage:
    python benchmarks/bench_selection.py [--repeats 20] [--json benchmarks/results/selection.json]

Cases (synthetic Gaussian features; the cost does not depend on the values):
  * pool 128 / budget 64, d = 327,680 (Phi-2 LoRA-B of the last layer's v_proj, r = 128),
    topk_dims 2,560, 4 large sources + 2 small ones;
  * pool 1024 / budget 512, same d is 1.3 GB in float32, so d = 40,960 with topk 2,560.
Facility location alone is timed on an l1 kernel of a [128 | 1024, 2560] block with one source
(the worst case: the selector runs it per source on smaller blocks), against submodlib's lazy
greedy when installed. Medians over repeats, after one warm-up.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from colm import CoresetConfig, CoresetSelector, facility_location, pairwise_similarity


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def make_pool(n: int, d: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    feats = torch.randn(n, d, generator=gen)
    n_small = max(2, n // 32)  # a few small-source examples, as in a real mixture pool
    large = ["math", "code", "chat", "qa"]
    sources = [large[i % 4] for i in range(n - n_small)] + ["rare"] * (n_small - 1) + ["tiny"]
    sizes = {"math": 100_000, "code": 80_000, "chat": 60_000, "qa": 50_000, "rare": 2_000, "tiny": 300}
    return feats, sources, sizes


def bench_facility(n: int, budget: int, repeats: int, device: str = "cpu") -> dict:
    gen = torch.Generator().manual_seed(1)
    sim = pairwise_similarity(torch.randn(n, 2560, generator=gen), "l1")
    on_device = sim.to(device)

    def run_colm():
        facility_location(on_device, budget)
        if on_device.is_cuda:
            torch.cuda.synchronize()

    row = {"case": f"facility_location n={n} budget={budget}",
           "colm_ms": median_ms(run_colm, repeats)}
    try:
        import numpy as np
        from submodlib import FacilityLocationFunction

        kernel = sim.numpy().astype(np.float32)

        def run_submodlib():
            fl = FacilityLocationFunction(n=n, mode="dense", sijs=kernel, separate_rep=False)
            fl.maximize(budget=budget, optimizer="LazyGreedy", stopIfZeroGain=False,
                        stopIfNegativeGain=False, show_progress=False)

        row["submodlib_lazy_ms"] = median_ms(run_submodlib, repeats)
    except ImportError:
        row["submodlib_lazy_ms"] = None
    return row


def bench_select(n: int, budget: int, d: int, topk: int, repeats: int, adam: bool = True,
                 device: str = "cpu") -> dict:
    feats, sources, sizes = make_pool(n, d)
    feats = feats.to(device)  # select() ends in one host sync, so wall time is complete
    cfg = CoresetConfig(within_source="facility_location", topk_dims=topk, adam_normalize=adam)
    selector = CoresetSelector(cfg, sizes)
    # A real run selects at every step with a growing Adam history: keep calling the same one.
    stats = {}

    def run():
        stats.update(selector.select(feats, sources, budget).stats)

    ms = median_ms(run, repeats)
    return {"case": f"select() n={n} budget={budget} d={d} topk={topk} adam={adam}",
            "colm_ms": ms, "submodlib_lazy_ms": None,
            "objective": stats["objective"], "match_error": stats["match_error"]}


def bench_pass1(n: int, d: int, repeats: int, device: str = "cpu") -> dict:
    """The Adam-normalized per-source sums alone: the part of select() that reads all of
    ``features`` and does the elementwise normalization over all n x d entries."""
    from colm import AdamNormalizer
    from colm.selection.passes import normalized_group_sums

    feats, _, _ = make_pool(n, d)
    feats = feats.to(device)
    norm = AdamNormalizer()
    groups = (torch.arange(n) % 4).to(device)  # 4 sources

    norm.prepare(feats)

    def run():
        normalized_group_sums(feats, groups, 4, norm)
        if feats.is_cuda:
            torch.cuda.synchronize()

    return {"case": f"  of which pass 1 (Adam feature sums) n={n} d={d}",
            "colm_ms": median_ms(run, repeats), "submodlib_lazy_ms": None}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--block-elements", type=int, default=None,
                        help="override colm.selection.normalize's CPU column-block size (elements)")
    parser.add_argument("--only-select", action="store_true", help="skip the facility-location rows")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.block_elements:
        import colm.selection.normalize

        colm.selection.normalize._CPU_BLOCK_ELEMENTS = args.block_elements

    few = max(3, args.repeats // 5)
    dev = args.device
    rows = [] if args.only_select else [
        bench_facility(128, 64, args.repeats, dev),
        bench_facility(1024, 512, few, dev),
    ]
    rows += [
        bench_select(128, 64, 327_680, 2560, args.repeats, device=dev),
        bench_pass1(128, 327_680, args.repeats, dev),
        bench_select(128, 64, 327_680, 2560, args.repeats, adam=False, device=dev),
        bench_select(1024, 512, 40_960, 2560, few, device=dev),
    ]
    env = {"torch": torch.__version__, "threads": torch.get_num_threads(),
           "cpu_count": os.cpu_count(), "machine": platform.machine(), "python": sys.version.split()[0]}
    env["device"] = torch.cuda.get_device_name() if dev.startswith("cuda") else "cpu"
    print(f"torch {env['torch']}, {env['threads']} threads, {env['cpu_count']} CPUs, device {env['device']}\n")
    print("| case | colm (ms, median) | submodlib lazy greedy (ms) |")
    print("|---|---:|---:|")
    for row in rows:
        theirs = "—" if row["submodlib_lazy_ms"] is None else f"{row['submodlib_lazy_ms']:.2f}"
        print(f"| {row['case']} | {row['colm_ms']:.2f} | {theirs} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"env": env, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
