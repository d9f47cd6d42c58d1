"""Time of one balanced sample (the cube method) against the same function at another revision.

One CPU thread, Gaussian features of 2,560 columns, budget n/2 (the protocol of the
within-source table in docs/benchmarks.md), best of 3 calls per size, both versions in one run
so the ratio is what to read:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_balanced.py --against 48e23f7
"""
from __future__ import annotations

import argparse
import subprocess
import time

import torch

from colm.selection.methods.balanced import balanced_sample

SOURCE = "src/colm/selection/methods/balanced.py"


def best_ms(sample, n: int, repeats: int = 3) -> float:
    x = torch.randn(n, 2560, generator=torch.Generator().manual_seed(0))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        sample(x, n // 2, torch.Generator().manual_seed(0))
        best = min(best, time.perf_counter() - start)
    return best * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--against", required=True, help="git revision whose balanced.py to compare with")
    ap.add_argument("--sizes", default="32,64,256,512")
    args = ap.parse_args()
    torch.set_num_threads(1)
    try:
        code = subprocess.run(["git", "show", f"{args.against}:{SOURCE}"], capture_output=True, text=True, check=True).stdout
    except subprocess.CalledProcessError as e:
        raise SystemExit(f"--against {args.against}: git show failed: {e.stderr.strip()}") from None
    other: dict = {}
    exec(compile(code, f"{args.against}:{SOURCE}", "exec"), other)
    print("| n | this tree (ms) | " + args.against + " (ms) | ratio |\n|---:|---:|---:|---:|")
    for n in (int(s) for s in args.sizes.split(",")):
        mine, theirs = best_ms(balanced_sample, n), best_ms(other["balanced_sample"], n)
        print(f"| {n} | {mine:.1f} | {theirs:.1f} | {mine / theirs:.2f} |")


if __name__ == "__main__":
    main()
