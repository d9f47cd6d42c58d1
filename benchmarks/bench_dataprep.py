"""Preparing the shipped mixture: the pre-change code vs the batched path, cold and cached.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_dataprep.py \
        [--rounds 3] [--max-length 128] [--baseline 6930640] [--json benchmarks/results/dataprep.json]

"Prepare" is what `colm demo` / `colm train` do before training, with the embedded tokenizer
(loaded from its cache before the clock starts): load the train split (27,144 rows) and the
validation split of the shipped mixture, and tokenize both. Every measurement runs in a fresh
Python process (nothing warm in-process; the OS file cache is warm for all alike); in each
round the arms run one after the other in a rotated order, and ratios are taken per round:

* ``old``: the loading and templating modules of the `--baseline` commit (the code before this
  change), copied from git into a temporary folder and run on today's package otherwise;
* ``cold``: today's code, no cache;
* ``cold_writing``: today's code with an empty cache folder (the first start: tokenizes, then
  writes the cache entries);
* ``cached``: the next start on that folder (hits: no tokenization);
* ``encode_only``: only the tokenizer backend's `encode_batch_fast` on every context and
  response text of the train split, in batches of 1000 (the ids read out, nothing else): the
  floor any exact tokenization of this data pays.

Wall and CPU time (all threads of the process) are both recorded: on a shared machine the wall
time depends on the other jobs, the CPU time much less. Each process also reports its start-up time (interpreter + imports + tokenizer load), outside
"prepare". The old and new outputs of every round are compared by digest: the benchmark fails
if they differ. Prints a markdown table and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ARMS = ("old", "cold", "cold_writing", "cached", "encode_only")
_STARTED = time.perf_counter()


# ---------------------------------------------------------------- one measurement (a worker)


def worker(arm: str, max_length: int, cache_dir: str | None, old_dir: str | None) -> dict:
    import datasets

    datasets.disable_progress_bars()
    from colm.data import DEFAULT_TEMPLATE, default_mixture_dir, load_mixture, tokenize_mixture
    from colm.data.tokenized_cache import data_digest
    from colm.models.default import default_tokenizer

    tokenizer = default_tokenizer()
    started_s = time.perf_counter() - _STARTED
    mixture = default_mixture_dir()
    result: dict = {"arm": arm, "start_s": started_s}
    if arm == "encode_only":
        train = load_mixture(mixture, split="train")
        texts = [DEFAULT_TEMPLATE.replace("{prompt}", p) for p in train.data.column("prompt").to_pylist()]
        texts += train.data.column("response").to_pylist()
        backend = tokenizer.backend_tokenizer
        t0, c0 = time.perf_counter(), time.process_time()
        tokens = 0
        for start in range(0, len(texts), 1000):  # the batches tokenize_mixture uses
            encodings = backend.encode_batch_fast(texts[start : start + 1000], add_special_tokens=False)
            tokens += sum(len(e.ids) for e in encodings)
        result["prepare_s"] = time.perf_counter() - t0
        result["prepare_cpu_s"] = time.process_time() - c0
        result["tokens"] = tokens
        result["texts"] = len(texts)
        return result
    if arm == "old":
        sys.path.insert(0, old_dir)
        import old_loading  # noqa: E402  (copied from the baseline commit)
        import old_templating  # noqa: E402

        load, tokenize = old_loading.load_mixture, old_templating.tokenize_mixture
        extra = {}
    else:
        load, tokenize = load_mixture, tokenize_mixture
        extra = {"cache_dir": cache_dir}
    t0, c0 = time.perf_counter(), time.process_time()
    train_raw = load(mixture, split="train")
    eval_raw = load(mixture, split="validation")
    t1 = time.perf_counter()
    train, train_stats = tokenize(train_raw, tokenizer, max_length=max_length, **extra)
    evald, eval_stats = tokenize(eval_raw, tokenizer, max_length=max_length, **extra)
    t2, c2 = time.perf_counter(), time.process_time()
    result.update(
        prepare_s=t2 - t0, prepare_cpu_s=c2 - c0, load_s=t1 - t0, tokenize_s=t2 - t1,
        rows=len(train_raw) + len(eval_raw), kept=len(train) + len(evald),
        stats=[train_stats, eval_stats],
        digests=[data_digest(d.with_format("arrow")[:]) for d in (train, evald)],
    )
    return result


# ---------------------------------------------------------------- the driver


def baseline_modules(ref: str, folder: Path) -> None:
    """Write the baseline commit's loading.py and templating.py as old_*.py into `folder`."""
    root = Path(__file__).resolve().parents[1]
    for name in ("loading", "templating"):
        source = subprocess.run(
            ["git", "-C", str(root), "show", f"{ref}:src/colm/data/{name}.py"],
            check=True, capture_output=True, text=True,
        ).stdout
        (folder / f"old_{name}.py").write_text(source)


def run_worker(arm: str, args: argparse.Namespace, cache_dir: Path, old_dir: Path) -> dict:
    command = [
        sys.executable, __file__, "--worker", arm, "--max-length", str(args.max_length),
        "--cache-dir", str(cache_dir), "--old-dir", str(old_dir),
    ]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def profile(arm: str, args: argparse.Namespace) -> None:
    import cProfile
    import pstats

    with tempfile.TemporaryDirectory() as tmp:
        baseline_modules(args.baseline, Path(tmp))
        profiler = cProfile.Profile()
        profiler.enable()
        result = worker(arm, args.max_length, None, tmp)
        profiler.disable()
    print(f"{arm}: prepare {result['prepare_s']:.2f} s (load {result['load_s']:.2f} s, "
          f"tokenize {result['tokenize_s']:.2f} s) under the profiler")
    pstats.Stats(profiler).sort_stats("tottime").print_stats(12)
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(30)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--max-length", type=int, default=128, help="colm demo's default")
    p.add_argument("--baseline", default="6930640", help="git commit of the code before the change")
    p.add_argument("--json", default="benchmarks/results/dataprep.json")
    p.add_argument("--profile", choices=["old", "cold"],
                   help="instead: profile one arm in this process (cProfile: top functions by own and by "
                        "cumulative time)")
    p.add_argument("--worker", choices=ARMS, help=argparse.SUPPRESS)
    p.add_argument("--cache-dir", help=argparse.SUPPRESS)
    p.add_argument("--old-dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        cache = None if args.worker in ("old", "cold") else args.cache_dir
        print(json.dumps(worker(args.worker, args.max_length, cache, args.old_dir)))
        return

    from colm.models.default import default_tokenizer

    default_tokenizer()  # trained and cached once, outside every measurement
    if args.profile:
        profile(args.profile, args)
        return
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        old_dir, cache_dir = Path(tmp) / "old", Path(tmp) / "cache"
        old_dir.mkdir()
        baseline_modules(args.baseline, old_dir)
        order = ["old", "cold", "cold_writing", "encode_only"]
        for r in range(args.rounds):
            shutil.rmtree(cache_dir, ignore_errors=True)
            rotated = order[r % len(order):] + order[: r % len(order)]
            results = {}
            for arm in rotated:
                results[arm] = run_worker(arm, args, cache_dir, old_dir)
                if arm == "cold_writing":  # the second start right after the first
                    results["cached"] = run_worker("cached", args, cache_dir, old_dir)
            digests = {arm: results[arm]["digests"] for arm in ("old", "cold", "cold_writing", "cached")}
            if len({json.dumps(d) for d in digests.values()}) != 1:
                raise SystemExit(f"round {r}: outputs differ: {digests}")
            stats = {arm: results[arm]["stats"] for arm in ("old", "cold", "cached")}
            if len({json.dumps(s, sort_keys=True) for s in stats.values()}) != 1:
                raise SystemExit(f"round {r}: stats differ: {stats}")
            rounds.append({"order": rotated, "load_avg": os.getloadavg(), **results})
            line = "  ".join(f"{a} {results[a]['prepare_s']:.2f}s" for a in ARMS)
            print(f"round {r + 1}/{args.rounds}: {line}  (load avg {os.getloadavg()[0]:.2f})", flush=True)

    def median(arm: str, key: str = "prepare_s") -> float:
        return statistics.median(rd[arm][key] for rd in rounds)

    def ratio(a: str, b: str) -> float:
        return statistics.median(rd[a]["prepare_s"] / rd[b]["prepare_s"] for rd in rounds)

    first = rounds[0]
    summary = {
        "prepare_s": {arm: median(arm) for arm in ARMS},
        "prepare_cpu_s": {arm: median(arm, "prepare_cpu_s") for arm in ARMS},
        "load_s": {arm: median(arm, "load_s") for arm in ("old", "cold", "cold_writing", "cached")},
        "tokenize_s": {arm: median(arm, "tokenize_s") for arm in ("old", "cold", "cold_writing", "cached")},
        "start_s": {arm: median(arm, "start_s") for arm in ARMS},
        "speedup_old_over_cold": ratio("old", "cold"),
        "speedup_old_over_cold_writing": ratio("old", "cold_writing"),
        "speedup_old_over_cached": ratio("old", "cached"),
        "rows": first["cold"]["rows"],
        "train_texts": first["encode_only"]["texts"],
        "train_tokens": first["encode_only"]["tokens"],
        "outputs_identical": True,
    }
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "settings": {"rounds": args.rounds, "max_length": args.max_length, "baseline": args.baseline},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "python": platform.python_version(), "when_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())},
        "summary": summary,
        "rounds": rounds,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print()
    print("| arm | prepare s (median) | CPU s | load s | tokenize s | old / arm (median of rounds) |")
    print("|---|---:|---:|---:|---:|---:|")
    for arm in ARMS:
        load = summary["load_s"].get(arm)
        tok = summary["tokenize_s"].get(arm)
        print(f"| {arm} | {summary['prepare_s'][arm]:.2f} | {summary['prepare_cpu_s'][arm]:.2f} | {'' if load is None else f'{load:.2f}'} | "
              f"{'' if tok is None else f'{tok:.2f}'} | {ratio('old', arm):.1f}x |")
    print(f"\n{summary['rows']} rows; start-up (imports + tokenizer) median "
          f"{statistics.median(summary['start_s'].values()):.1f} s per process; outputs identical. "
          f"JSON: {args.json}")


if __name__ == "__main__":
    main()
