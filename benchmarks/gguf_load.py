"""Load times of a GGUF file through colm's cache: the first load (dequantize + write the cache)
against a later one (plain from_pretrained of the cached folder), and that both give the same
logits. Default file: SmolLM2-135M-Instruct from `make smollm2`.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/gguf_load.py [--gguf FILE] [--threads 2]
        [--forward-batch 16 --forward-tokens 128]

The cache goes to a fresh temporary folder, so the first load always converts. With
--forward-batch > 0 it also times one no-grad forward of a random batch of that shape (median of
3 after a warm-up) at 1 thread and at --threads.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from colm.models.default import load_model_and_tokenizer
from colm.models.gguf import smollm2_path


def timed_load(source, cache):
    start = time.perf_counter()
    model, tokenizer = load_model_and_tokenizer(source, colm_cache_dir=cache)
    return model, tokenizer, time.perf_counter() - start


def forward_seconds(model, batch: int, tokens: int, threads: int) -> float:
    torch.set_num_threads(threads)
    ids = torch.randint(0, model.config.vocab_size, (batch, tokens), generator=torch.Generator().manual_seed(0))
    times = []
    with torch.no_grad():
        for _ in range(4):  # the first is a warm-up
            start = time.perf_counter()
            model(input_ids=ids, use_cache=False)
            times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gguf", default=None, help="a .gguf file (default: the SmolLM2 file)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--forward-batch", type=int, default=0)
    parser.add_argument("--forward-tokens", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    source = args.gguf or smollm2_path()
    with tempfile.TemporaryDirectory() as cache:
        first, tokenizer, first_s = timed_load(source, cache)
        again, _, again_s = timed_load(source, cache)
        ids = tokenizer("Question: What is 12 * 7?\nAnswer:", return_tensors="pt")["input_ids"]
        with torch.no_grad():
            diff = (first(input_ids=ids).logits - again(input_ids=ids).logits).abs().max().item()
        print(f"file: {source}")
        print(f"first load (convert + cache): {first_s:.1f} s; cached load: {again_s:.2f} s "
              f"({args.threads} threads)")
        print(f"max |logits first - cached|: {diff:g}")
        print(f"parameters: {sum(p.numel() for p in again.parameters()):,}; dtype {again.dtype}; "
              f"tie_word_embeddings {again.config.tie_word_embeddings}")
        if args.forward_batch > 0:
            for threads in sorted({1, args.threads}):
                seconds = forward_seconds(again, args.forward_batch, args.forward_tokens, threads)
                print(f"no-grad forward {args.forward_batch}x{args.forward_tokens}, {threads} "
                      f"thread(s): {seconds:.2f} s")


if __name__ == "__main__":
    main()
