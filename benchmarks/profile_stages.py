"""Where the time goes inside select() and an exact-feature call (the breakdowns in
docs/benchmarks.md). Not a benchmark of record: the totals come from bench_selection.py and
bench_features.py; this splits them into stages.

    .venv/bin/python benchmarks/profile_stages.py select [--threads 1] [--repeats 10]
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/profile_stages.py exact [--threads 1]
    .venv/bin/python benchmarks/profile_stages.py nll [--threads 1] [--repeats 15]

* ``select``: mean milliseconds per select() call of each internal stage (pool 128, budget 64,
  d = 327,680 → 2,560, Adam), by timing wrappers around the selector's helpers.
* ``exact``: torch profiler table (self CPU time by op and shape) of 3 exact-feature calls on
  the 1M benchmark Llama, capture excluded.
* ``nll``: forward + backward of the per-token NLL on ``[8511, 1024]`` logits (the 1M model's
  supervised tokens x vocabulary): ``F.cross_entropy`` vs ``colm.features.loss.token_nll``.
"""
from __future__ import annotations

import argparse
import functools
import statistics
import time

import torch


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def profile_select(repeats: int) -> None:
    from bench_selection import make_pool

    import colm.selection.selector as selector_mod
    from colm import AdamNormalizer, CoresetConfig, CoresetSelector

    spent: dict[str, float] = {}

    def timed(owner, name: str) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                spent[name] = spent.get(name, 0.0) + (time.perf_counter() - start) * 1e3

        setattr(owner, name, wrapper)

    import colm.selection.passes as passes_mod

    for name in ("_greedy_all", "similarity_unchecked", "cluster_weights"):
        timed(selector_mod, name)
    for name in ("normalized_group_sums", "top_columns", "gather", "selected_sums", "mean_square"):
        timed(passes_mod, name)
    timed(AdamNormalizer, "transform")
    features, sources, sizes = make_pool(128, 327_680)
    selector = CoresetSelector(CoresetConfig(within_source="facility_location"), sizes)
    selector.select(features, sources, 64)  # warm-up (and numba compile)
    spent.clear()
    start = time.perf_counter()
    for _ in range(repeats):
        selector.select(features, sources, 64)
    total = (time.perf_counter() - start) * 1e3 / repeats
    print(f"select() mean {total:.1f} ms over {repeats} calls")
    for name, ms in sorted(spent.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<22} {ms / repeats:6.2f} ms")
    print(f"  {'(rest)':<22} {total - sum(spent.values()) / repeats:6.2f} ms")


def profile_exact() -> None:
    from bench_features import build, pool
    from torch.profiler import profile

    from colm.features import LastLayerReplay, exact_gradients, find_target_parameters

    model = build("1M")
    batch = pool(model.config.vocab_size)
    replay = LastLayerReplay(model)
    replay.capture(batch)
    targets = find_target_parameters(model)
    exact_gradients(replay, targets)  # warm-up
    with profile(record_shapes=True) as prof:
        for _ in range(3):
            exact_gradients(replay, targets)
    print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=30))


def profile_nll(repeats: int) -> None:
    import torch.nn.functional as F

    from colm.features.loss import token_nll

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(8511, 1024, generator=gen).requires_grad_(True)
    targets = torch.randint(0, 1024, (8511,), generator=gen)
    weights = torch.rand(8511, generator=gen)

    def run(loss_fn):
        return lambda: torch.autograd.grad((loss_fn(logits, targets) * weights).sum(), logits)

    reference = run(lambda x, t: F.cross_entropy(x, t, reduction="none"))
    ours = run(token_nll)
    for label, fn in (("F.cross_entropy", reference), ("token_nll", ours)):
        print(f"{label:<16} forward + backward {median_ms(fn, repeats):6.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["select", "exact", "nll"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.what == "select":
        profile_select(args.repeats)
    elif args.what == "exact":
        profile_exact()
    else:
        profile_nll(args.repeats)


if __name__ == "__main__":
    main()
