"""GPU step time and peak memory: big batch vs gradient accumulation vs random small vs CoLM.

One prepared script for a lent H100/H200 (issue 6, item 4). A randomly initialized ~1.1B
parameter Llama (TinyLlama-1.1B shapes) in bf16 with LoRA (r=128, alpha=512 on the attention
projections), sequence length 512, AdamW on the LoRA parameters. Arms, each timed over the same
number of optimizer steps after warm-up:

  batch128     one forward/backward of 128 examples
  ga2x64       gradient accumulation, 2 micro-batches of 64 (same update as batch128)
  random64     one forward/backward of 64 random examples
  colm64of128  no-grad scoring of a pool of 128 (in chunks of --score-chunk) + selection + a
               forward/backward of the 64 selected; the scoring pass and the selection are also
               timed on their own, and the "ideal" (forward of 128 + forward/backward of 64, as
               the paper counts) is reported next to it

Peak memory is torch.cuda.max_memory_allocated over the arm's steps. An arm that runs out of
memory is reported as OOM rather than dropped. Run with --tiny on a CPU to check the script.

    PYTHONPATH=src python benchmarks/gpu_step.py --out benchmarks/results/gpu_step.json
"""
from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from colm import CoresetConfig, CoresetSelector, gradient_features  # noqa: E402


def build_model(tiny: bool, device: torch.device, dtype: torch.dtype):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    if tiny:
        config = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
        lora_r = 8
    else:  # TinyLlama-1.1B shapes
        config = LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                             num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048,
                             rms_norm_eps=1e-5)
        lora_r = 128
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    n_params = sum(p.numel() for p in model.parameters())
    model = get_peft_model(model, LoraConfig(r=lora_r, lora_alpha=4 * lora_r, lora_dropout=0.0,
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                                             task_type="CAUSAL_LM"))
    # LoRA B starts at zero; give it values so that features are not all zero.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 1e-3)
    model.config.use_cache = False
    return model, n_params


def make_pool(n: int, seq: int, vocab: int, n_sources: int, device, seed: int):
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, vocab, (n, seq), generator=g)
    labels = input_ids.clone()
    labels[:, : seq // 4] = -100  # a masked prompt
    sources = torch.randint(0, n_sources, (n,), generator=g)
    sources[:4] = n_sources  # a rare source
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}
    return {k: v.to(device) for k, v in batch.items()}, sources.tolist()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def rows(batch, idx):
    return {k: v[idx] for k, v in batch.items()}


def train_on(model, batch, micro: int):
    """Forward/backward of `batch` in micro-batches of `micro`, loss normalized over all tokens."""
    n_tokens = batch["labels"][:, 1:].ne(-100).sum()
    for start in range(0, batch["input_ids"].shape[0], micro):
        part = {k: v[start : start + micro] for k, v in batch.items()}
        out = model(**part, num_items_in_batch=n_tokens)
        out.loss.backward()


def run_arm(name, step_fn, device, warmup, steps):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    extra: dict[str, list[float]] = {}
    try:
        for _ in range(warmup):
            step_fn(extra)
        extra.clear()
        times = []
        for _ in range(steps):
            sync(device)
            t0 = time.perf_counter()
            step_fn(extra)
            sync(device)
            times.append(time.perf_counter() - t0)
    except torch.OutOfMemoryError:
        print("arm done:", json.dumps({"arm": name, "status": "OOM"}), flush=True)
        return {"arm": name, "status": "OOM"}
    result = {"arm": name, "status": "ok", "step_s": statistics.median(times), "steps": steps}
    for key, values in extra.items():
        result[key] = statistics.median(values)
    if device.type == "cuda":
        result["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    print("arm done:", json.dumps(result), flush=True)  # partial results survive a time-out
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="a tiny model on any device (to check the script)")
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--pool", type=int, default=128)
    ap.add_argument("--score-chunk", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--features", default="zo,exact", help="comma-separated feature types, one CoLM arm each")
    ap.add_argument("--zo-probes", type=int, default=8)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    seq = 64 if args.tiny else args.seq
    model, n_params = build_model(args.tiny, device, dtype)
    model.train()
    vocab = model.config.vocab_size
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    pool_n, b = args.pool, args.pool // 2
    sizes = {0: 1000, 1: 1000, 2: 1000, 3: 40}  # source 3 is small: kept whole
    pool, sources = make_pool(pool_n, seq, vocab, 3, device, seed=0)
    step_counter = [0]

    def optimizer_step():
        opt.step()
        opt.zero_grad(set_to_none=True)

    def big(extra):
        train_on(model, pool, pool_n)
        optimizer_step()

    def accumulate(extra):
        train_on(model, pool, b)
        optimizer_step()

    def random_small(extra):
        idx = torch.randperm(pool_n, device=device)[:b]
        train_on(model, rows(pool, idx), b)
        optimizer_step()

    def colm(extra, cfg, selector):
        sync(device)
        t0 = time.perf_counter()
        feats = torch.cat([
            gradient_features(model, rows(pool, slice(s, s + args.score_chunk)), cfg, step=step_counter[0])
            for s in range(0, pool_n, args.score_chunk)
        ])
        sync(device)
        t1 = time.perf_counter()
        sel = selector.select(feats, sources, b)
        sync(device)
        t2 = time.perf_counter()
        train_on(model, rows(pool, sel.indices.to(device)), b)
        optimizer_step()
        step_counter[0] += 1
        extra.setdefault("score_s", []).append(t1 - t0)
        extra.setdefault("select_s", []).append(t2 - t1)

    def forward_only(extra):
        with torch.no_grad():
            for s in range(0, pool_n, args.score_chunk):
                model(**rows(pool, slice(s, s + args.score_chunk)))

    results = [
        run_arm(f"batch{pool_n}", big, device, args.warmup, args.steps),
        run_arm(f"ga2x{b}", accumulate, device, args.warmup, args.steps),
        run_arm(f"random{b}", random_small, device, args.warmup, args.steps),
        run_arm(f"forward{pool_n}_nograd", forward_only, device, args.warmup, args.steps),
    ]
    by = {r["arm"]: r for r in results}
    for feature in args.features.split(","):
        cfg = CoresetConfig(within_source="facility_location", feature=feature, zo_probes=args.zo_probes, topk_dims=2560)
        step_counter[0] = 0
        selector = CoresetSelector(cfg, sizes)
        arm = run_arm(f"colm{b}of{pool_n}_{feature}", lambda e: colm(e, cfg, selector),
                      device, args.warmup, args.steps)
        if all(by[a]["status"] == "ok" for a in (f"random{b}", f"forward{pool_n}_nograd")) and arm["status"] == "ok":
            arm["ideal_step_s"] = by[f"forward{pool_n}_nograd"]["step_s"] + by[f"random{b}"]["step_s"]
        results.append(arm)
    info = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "peft": __import__("peft").__version__,
        "base_params": n_params,
        "dtype": str(dtype), "seq": seq, "pool": pool_n, "coreset": b,
        "features": args.features, "zo_probes": args.zo_probes, "score_chunk": args.score_chunk,
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(info))
    print(f"{'arm':<20}{'status':<8}{'step s':>9}{'peak GiB':>10}  extra")
    for r in results:
        extra = {k: round(v, 4) for k, v in r.items() if k not in ("arm", "status", "step_s", "peak_mem_gib", "steps")}
        print(f"{r['arm']:<20}{r['status']:<8}{r.get('step_s', float('nan')):>9.3f}"
              f"{r.get('peak_mem_gib', float('nan')):>10.2f}  {extra}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"info": info, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
