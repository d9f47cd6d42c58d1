"""`colm train`'s step time from two source trees, alternating, in one run (issue 27).

The top-floor refactor moved the CLI's library work (model and data preparation, the trainer
factory, the step timer, peak memory) into the library layers. A step of `colm train` should
not get slower. This script runs the same `colm train` command (tiny embedded model, default
CoresetConfig, no evaluation, no checkpoints) from an old and a new `src/` folder, arms
alternating (old, new, new, old, old, new, ...: neither always runs second) so a change in
machine load hits both, and reports each run's median step time (report.json's
`time.median_s`), the ratio of the medians new/old and the per-round ratios.

    git archive main src | tar -x -C /tmp/colm_old        # the tree before the refactor
    git archive HEAD src | tar -x -C /tmp/colm_new        # after it (a snapshot: the worktree may change)
    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_cli_step.py \
        --old-src /tmp/colm_old/src --new-src /tmp/colm_new/src --rounds 6 --out benchmarks/results/cli_step.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TRAIN = ["--max-steps", "30", "--per-device-train-batch-size", "16", "--max-length", "128",
         "--max-examples-per-source", "200", "--save-strategy", "no", "--eval-strategy", "no",
         "--logging-steps", "10", "--disable-tqdm", "true", "--seed", "0"]


def one_run(src: Path, out: Path, extra: list[str]) -> dict[str, float]:
    """Run `colm train` with `src` first on the path; its step times from report.json."""
    env = {**os.environ, "PYTHONPATH": str(src.resolve())}
    cmd = [sys.executable, "-m", "colm.cli", "train", *TRAIN, *extra, "--output-dir", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"{src}: colm train failed ({proc.returncode}): {proc.stderr[-2000:]}")
    report = json.loads((out / "report.json").read_text())
    return {"median_s": report["time"]["median_s"], "mean_s": report["time"]["mean_s"],
            "steps": report["time"]["steps"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old-src", type=Path, required=True, help="src/ folder of the code before")
    ap.add_argument("--new-src", type=Path, required=True, help="src/ folder of the code after")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--extra", default="", help="more `colm train` options, space-separated")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    extra = args.extra.split()
    runs: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            pair = (("old", args.old_src), ("new", args.new_src))
            for arm, src in pair if r % 2 == 0 else pair[::-1]:  # ABBA: neither arm always runs second
                got = one_run(src, Path(tmp) / f"{arm}{r}", extra)
                runs[arm].append(got)
                print(f"round {r} {arm}: median {got['median_s']:.4f} s/step, mean {got['mean_s']:.4f} "
                      f"({got['steps']} steps)", flush=True)
    old = statistics.median(x["median_s"] for x in runs["old"])
    new = statistics.median(x["median_s"] for x in runs["new"])
    paired = [n["median_s"] / o["median_s"] for o, n in zip(runs["old"], runs["new"])]
    summary = {"old_median_s": old, "new_median_s": new, "new_over_old": new / old,
               "paired_ratios": paired, "rounds": args.rounds, "command": TRAIN + extra,
               "load_average": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    print(json.dumps({k: v for k, v in summary.items() if k != "command"}, indent=1))
    if args.out:
        args.out.write_text(json.dumps({"summary": summary, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
