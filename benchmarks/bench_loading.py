"""Loading the shipped mixture: today's `load_mixture` vs a baseline commit's, in one process.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_loading.py [--rounds 15] [--baseline add47ab] \
        [--json benchmarks/results/loading_layouts.json]

Only the loading (no tokenization, which `bench_dataprep.py` measures and which dwarfs it): the
train split (27,144 rows) and the validation split (937 rows) of the shipped mixture, read from
its 28 gzip JSON Lines files into the canonical Arrow table. The baseline's `loading.py` and
`mixture.py` are copied from git into a temporary folder (the loading module reading the copied
`mixture.py`, so the whole file-name and reading path is the old one). Each round loads with both,
in alternating order, after one warm-up load each (imports, OS file cache); wall and CPU time per
round, ratios per round. The outputs are compared every round: the benchmark fails if they differ.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def baseline_loader(ref: str, folder: Path):
    """The baseline commit's load_mixture, importing its own mixture.py."""
    root = Path(__file__).resolve().parents[1]
    for name in ("loading", "mixture"):
        text = subprocess.run(["git", "-C", str(root), "show", f"{ref}:src/colm/data/{name}.py"],
                              check=True, capture_output=True, text=True).stdout
        text = text.replace("from colm.data.mixture import", "from old_mixture import")
        (folder / f"old_{name}.py").write_text(text)
    sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location("old_loading", folder / "old_loading.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["old_loading"] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module.load_mixture


def timed(load, mixture) -> tuple[float, float, list]:
    t0, c0 = time.perf_counter(), time.process_time()
    train, valid = load(mixture, split="train"), load(mixture, split="validation")
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return wall, cpu, [train.data.table, valid.data.table]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--baseline", default="add47ab", help="git commit of the code before the change")
    p.add_argument("--json", default="benchmarks/results/loading_layouts.json")
    args = p.parse_args()
    import datasets

    datasets.disable_progress_bars()
    from colm.data import default_mixture_dir, load_mixture

    mixture = default_mixture_dir()
    with tempfile.TemporaryDirectory() as tmp:
        old = baseline_loader(args.baseline, Path(tmp))
        arms = {"old": old, "new": load_mixture}
        for load in arms.values():  # warm-up: imports, OS file cache
            timed(load, mixture)
        rounds = []
        for r in range(args.rounds):
            order = ["old", "new"] if r % 2 == 0 else ["new", "old"]
            got = {}
            for name in order:
                wall, cpu, tables = timed(arms[name], mixture)
                got[name] = {"wall_s": wall, "cpu_s": cpu, "tables": tables}
            if not all(a.equals(b) for a, b in zip(got["old"]["tables"], got["new"]["tables"])):
                raise SystemExit(f"round {r}: old and new loads differ")
            rounds.append({"order": order, "load_avg": list(os.getloadavg()),
                           **{n: {k: v for k, v in g.items() if k != "tables"} for n, g in got.items()}})
    summary = {}
    for key in ("wall_s", "cpu_s"):
        summary[key] = {n: statistics.median(r[n][key] for r in rounds) for n in arms}
        ratios = [r["new"][key] / r["old"][key] for r in rounds]
        summary[f"new_over_old_{key}"] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
    print("| | old (median) | new (median) | new / old, median of rounds (range) |")
    print("|---|---:|---:|---:|")
    for key in ("wall_s", "cpu_s"):
        s = summary[f"new_over_old_{key}"]
        print(f"| {key} | {summary[key]['old']:.3f} | {summary[key]['new']:.3f} | "
              f"{s['median']:.3f} ({s['min']:.3f}-{s['max']:.3f}) |")
    print(f"{args.rounds} rounds; outputs identical in every round; load average "
          f"{min(r['load_avg'][0] for r in rounds):.1f}-{max(r['load_avg'][0] for r in rounds):.1f}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({
        "command": " ".join(sys.argv), "baseline": args.baseline, "machine": platform.platform(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "summary": summary, "rounds": rounds,
    }, indent=1))


if __name__ == "__main__":
    main()
