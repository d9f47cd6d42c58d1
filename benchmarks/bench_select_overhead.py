#!/usr/bin/env python
"""Usage: python benchmarks/bench_select_overhead.py OUT.json

select() on a tiny pool (n=40, d=96, budget 16): the per-call overhead the registry dispatch
could add is largest relative to the work here. Median of 300 calls per method, after 20 warm-ups."""
import json
import statistics
import sys
import time

import torch

from colm import CoresetConfig, CoresetSelector

torch.set_num_threads(1)
g = torch.Generator().manual_seed(0)
feats = torch.randn(40, 96, generator=g)
sources = [("a", "b", "c", "d")[i % 4] for i in range(40)]
sizes = {"a": 5000, "b": 3000, "c": 2000, "d": 40}
out = {}
for method in ["random", "facility_location", "mean_match", "pps"]:
    sel = CoresetSelector(CoresetConfig(within_source=method), sizes)
    x = feats if method != "random" else None
    for _ in range(20):
        sel.select(x, sources, 16)
    times = []
    for _ in range(300):
        t = time.perf_counter()
        sel.select(x, sources, 16)
        times.append((time.perf_counter() - t) * 1e3)
    out[method] = statistics.median(times)
json.dump(out, open(sys.argv[1], "w"))
print(out)
