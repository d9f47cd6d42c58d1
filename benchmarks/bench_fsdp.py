"""A sharded (FSDP2) step's overhead over DDP, on CPU with 2 gloo processes, in one run.

The plain-loop recipe (examples/plain_pytorch_loop.py, made data-parallel): every rank collates
its share of the pool, scores it (when the method uses features: ``gradient_features(...,
gather=True)``), the selector picks the global coreset, every rank trains on its half of it. Arms:
{DDP, FSDP2} x {colm's default (``within_source="random"``, no features), the paper's method
(facility location on zo m=1 features)}, same initial model, same rows (fixed length, so every
batch has one shape), in alternating rounds so that load from other jobs hits every arm alike.
FSDP2 is applied as accelerate's TRANSFORMER_BASED_WRAP does it: ``fully_shard`` per decoder
layer, then on the model. Per round: each arm's median step time; the result is, per method, the
median over rounds of FSDP2 / DDP with its min-max.

On one machine FSDP2 pays the all-gathers (forward, backward) and reduce-scatters that DDP's
single all-reduce replaces; what it buys, memory per rank, is not measured here.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 .venv/bin/python -m torch.distributed.run --standalone \
        --nproc_per_node 2 benchmarks/bench_fsdp.py --rounds 5 --out benchmarks/results/fsdp_cpu.json
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel
from transformers import DataCollatorForSeq2Seq
from transformers.utils import logging as hf_logging

from colm import CoresetConfig, CoresetSelector, gradient_features
from colm.data import default_mixture_dir, load_mixture, tokenize_mixture
from colm.models.default import default_model, default_tokenizer

METHODS = {
    "default": dict(pool_factor=2),
    "zo": dict(pool_factor=2, within_source="facility_location", feature="zo", zo_probes=1),
}


def shard(model: torch.nn.Module) -> torch.nn.Module:
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    return model


class Arm:
    """One (wrapping, method) pair: its model, optimizer, selector, and step times."""

    def __init__(self, wrapping: str, method: str, init: torch.nn.Module, sizes: dict[str, int]) -> None:
        self.name = f"{wrapping}-{method}"
        self.config = CoresetConfig(**METHODS[method])
        copied = copy.deepcopy(init)
        self.model = shard(copied) if wrapping == "fsdp2" else DistributedDataParallel(copied)
        self.scored = copied  # DDP: score the module itself (no gradient sync in a forward)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3)
        self.selector = CoresetSelector(self.config, sizes)
        self.step_count = 0

    def step(self, pool: list[dict], collate, batch: int) -> float:
        world, rank = dist.get_world_size(), dist.get_rank()
        dist.barrier()
        start = time.perf_counter()
        share = len(pool) // world
        mine = pool[rank * share:(rank + 1) * share]
        features = (gradient_features(self.scored, collate(mine), self.config, step=self.step_count, gather=True)
                    if self.config.needs_features else None)
        chosen = self.selector.select(features, [r["source"] for r in pool], batch * world).indices.tolist()
        rows = [pool[i] for i in chosen][rank * batch:(rank + 1) * batch]
        self.model.train()
        loss = self.model(**collate(rows)).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        dist.barrier()
        self.step_count += 1
        return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="tiny")
    ap.add_argument("--batch", type=int, default=8, help="coreset rows per rank")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--steps", type=int, default=12, help="steps per arm and round (2 warm-up)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    hf_logging.set_verbosity_error()
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    world = dist.get_world_size()

    tok = default_tokenizer()
    data, _ = tokenize_mixture(load_mixture(default_mixture_dir(), split="train"), tok, max_length=args.max_length)
    data = data.filter(lambda r: len(r["input_ids"]) == args.max_length)
    rows = [data[i] for i in range(len(data))]
    sizes: dict[str, int] = {}
    for r in rows:
        sizes[r["source"]] = sizes.get(r["source"], 0) + 1
    pad = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100)
    collate = lambda chosen: pad([{k: r[k] for k in ("input_ids", "attention_mask", "labels")} for r in chosen])
    pool_size = 2 * args.batch * world
    init = default_model(tok, args.size, seed=0)
    arms = [Arm(w, m, init, sizes) for m in METHODS for w in ("ddp", "fsdp2")]
    rounds: list[dict[str, float]] = []
    position = 0
    for _ in range(args.rounds):
        medians = {}
        for arm in arms:
            times = []
            for _s in range(args.steps):
                pool = [rows[(position + k) % len(rows)] for k in range(pool_size)]
                position += pool_size
                times.append(arm.step(pool, collate, args.batch))
            medians[arm.name] = statistics.median(times[2:])
        rounds.append(medians)
    ratios = {
        method: [r[f"fsdp2-{method}"] / r[f"ddp-{method}"] for r in rounds] for method in METHODS
    }
    summary = {
        "size": args.size, "parameters": sum(p.numel() for p in init.parameters()), "world": world,
        "batch_per_rank": args.batch, "pool": pool_size, "max_length": args.max_length,
        "steps_per_round": args.steps, "rounds": rounds,
        "fsdp2_over_ddp": {m: {"median": statistics.median(v), "min": min(v), "max": max(v)} for m, v in ratios.items()},
        "step_ms_median": {a.name: 1e3 * statistics.median(r[a.name] for r in rounds) for a in arms},
    }
    if dist.get_rank() == 0:
        print(json.dumps(summary["fsdp2_over_ddp"], indent=1), json.dumps(summary["step_ms_median"], indent=1))
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(summary, indent=1) + "\n")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
