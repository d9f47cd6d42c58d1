"""Cost of per-example feature extraction relative to one no-grad forward of the same pool.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_features.py [--repeats 5] [--threads 2]
        [--sizes 1M 10M deep] [--clock wall|cpu] [--json benchmarks/results/features.json]

For a ~1M and a ~10M parameter Llama (and, with ``--sizes deep``, a 16-layer ~8M one; random
weights built from configs) and a pool of 128 right-padded sequences of up to 128 tokens (prompt
prefix and padding labelled -100), it times, in rounds interleaving all items (median over
rounds; ratios are per round, so load from other processes hits both sides alike):

* ``forward``: one no-grad forward of the pool (``use_cache=False``), the baseline;
* ``capture`` and one ``replay`` (last layer + final norm + LM head on supervised positions);
* ``gradient_features`` for zo (m = 1, 8), exact and hidden.

Prints a markdown table of seconds and ratios to the forward.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

from colm.config import CoresetConfig
from colm.features import LastLayerReplay, gradient_features


def build(size: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    shapes = {
        # ~1.05M parameters: 4 layers of width 128, vocabulary 1024
        "1M": dict(hidden_size=128, intermediate_size=344, num_hidden_layers=4,
                   num_attention_heads=4, vocab_size=1024),
        # ~10.0M parameters: 6 layers of width 320, vocabulary 4096
        "10M": dict(hidden_size=320, intermediate_size=864, num_hidden_layers=6,
                    num_attention_heads=5, vocab_size=4096),
        # ~7.9M parameters in 16 narrow layers: depth closer to real LMs, where the replayed
        # last layer is a small share of the forward (not run by default)
        "deep": dict(hidden_size=192, intermediate_size=512, num_hidden_layers=16,
                     num_attention_heads=4, vocab_size=2048),
    }[size]
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**shapes, max_position_embeddings=256, pad_token_id=0))
    return model.eval()


def pool(vocab: int, n: int = 128, T: int = 128, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (n, T), generator=gen)
    mask = torch.zeros(n, T, dtype=torch.long)
    labels = torch.full((n, T), -100)
    for i in range(n):
        length = T if i == 0 else int(torch.randint(T // 2, T + 1, (1,), generator=gen))
        prompt = int(torch.randint(T // 8, T // 3, (1,), generator=gen))
        mask[i, :length] = 1
        ids[i, length:] = 0
        labels[i, prompt:length] = ids[i, prompt:length]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def run(size: str, repeats: int, clock=time.perf_counter) -> list[tuple[str, float, float]]:
    """Time every item once per round, rounds interleaved; report the median seconds and the
    median over rounds of (item / forward of the same round), which is robust to other load on
    the machine drifting between rounds."""
    model = build(size)
    params = sum(p.numel() for p in model.parameters())
    batch = pool(model.config.vocab_size)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    replay = LastLayerReplay(model)

    def forward():
        with torch.no_grad():
            model(**inputs, use_cache=False)

    def capture():
        replay.capture(batch)

    def one_replay():
        with torch.no_grad():
            replay.losses()

    def features(config):
        return lambda: gradient_features(model, batch, config)

    items = [
        ("forward (no grad)", forward),
        ("capture (layers 0..L-2)", capture),
        ("one replay (last layer + head)", one_replay),
        ("zo m=1", features(CoresetConfig(feature="zo", zo_probes=1))),
        ("zo m=8", features(CoresetConfig(feature="zo", zo_probes=8))),
        ("exact", features(CoresetConfig(feature="exact"))),
        ("hidden", features(CoresetConfig(feature="hidden"))),
    ]
    for _, fn in items:  # warm-up
        fn()
    seconds: dict[str, list[float]] = {label: [] for label, _ in items}
    for _ in range(repeats):
        for label, fn in items:
            start = clock()
            fn()
            seconds[label].append(clock() - start)
    base = seconds["forward (no grad)"]
    rows = [
        (label, statistics.median(ts), statistics.median(t / b for t, b in zip(ts, base)))
        for label, ts in seconds.items()
    ]
    print(f"\n### Llama {size} ({params / 1e6:.2f}M parameters, "
          f"{model.config.num_hidden_layers} layers, vocab {model.config.vocab_size}), "
          f"pool 128 x 128, {int(batch['labels'][:, 1:].ne(-100).sum())} supervised tokens\n")
    print("| what | median s | median ratio to forward |\n|---|---|---|")
    for label, sec, ratio in rows:
        print(f"| {label} | {sec:.3f} | {ratio:.2f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--clock", choices=["wall", "cpu"], default="wall",
        help="wall: elapsed time; cpu: this process's CPU time (with --threads 1, robust to "
             "other processes sharing the cores)",
    )
    parser.add_argument("--sizes", nargs="+", default=["1M", "10M"], choices=["1M", "10M", "deep"])
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    print(f"torch {torch.__version__}, {args.threads} threads, {args.clock} clock, "
          f"{platform.machine()}, {os.cpu_count()} cores, median of {args.repeats} rounds")
    results = {}
    for size in args.sizes:
        rows = run(size, args.repeats, clock)
        results[size] = [{"what": label, "median_s": sec, "median_ratio_to_forward": ratio}
                         for label, sec, ratio in rows]
    if args.json:
        env = {"torch": torch.__version__, "threads": args.threads, "clock": args.clock,
               "repeats": args.repeats, "machine": platform.machine(), "cpu_count": os.cpu_count()}
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"env": env, "sizes": results}, f, indent=2)


if __name__ == "__main__":
    main()
