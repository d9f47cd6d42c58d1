"""CoLM in a hand-written PyTorch training loop (no transformers.Trainer).

Every step: draw a pool twice the batch, compute per-example gradient features with forward
passes only, let the selector pick the coreset, and train on it. Run:

    python examples/plain_pytorch_loop.py --steps 20

It trains the embedded default model on the shipped math mixture; `train(...)` below is the part
to copy into your own loop.
"""
from __future__ import annotations

import argparse
import random
from collections.abc import Callable, Sequence

import torch

from colm import CoresetConfig, CoresetSelector, gradient_features


def train(
    model: torch.nn.Module,
    examples: Sequence[dict],
    collate: Callable[[Sequence[dict]], dict[str, torch.Tensor]],
    *,
    steps: int,
    batch_size: int,
    config: CoresetConfig,
    lr: float = 1e-3,
    seed: int = 0,
    on_step: Callable[[int, float, list[int]], None] | None = None,
) -> None:
    """Train `model` for `steps` optimizer steps on coresets of `batch_size` examples.

    `examples` are dicts with input_ids, labels and a `source`; `collate` pads a list of them
    (without `source`) into tensors. The pool is `config.pool_factor * batch_size` examples.
    """
    device = next(model.parameters()).device
    sizes: dict[str, int] = {}
    for ex in examples:
        sizes[ex["source"]] = sizes.get(ex["source"], 0) + 1
    selector = CoresetSelector(config, sizes)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=lr,
        betas=config.adam_betas, eps=config.adam_eps,
    )
    rng = random.Random(seed)
    pool_size = config.pool_factor * batch_size
    for step in range(steps):
        pool_ids = rng.sample(range(len(examples)), pool_size)
        pool = [examples[i] for i in pool_ids]
        batch = {k: v.to(device) for k, v in collate([_model_fields(ex) for ex in pool]).items()}
        # 1. features of every pool example (model left unchanged), when the method uses them;
        #    the default (within_source="random") needs none
        features = gradient_features(model, batch, config, step=step) if config.needs_features else None  # [pool, d]
        # 2. the coreset: rare sources kept whole, the rest of the budget filled within sources
        selection = selector.select(features, [ex["source"] for ex in pool], batch_size)
        chosen = selection.indices.tolist()
        # 3. an ordinary training step on the coreset
        model.train()
        coreset = {k: v.to(device) for k, v in collate([_model_fields(pool[i]) for i in chosen]).items()}
        loss = model(**coreset).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if on_step is not None:
            on_step(step, float(loss), [pool_ids[i] for i in chosen])


def _model_fields(example: dict) -> dict:
    return {k: v for k, v in example.items() if k in ("input_ids", "attention_mask", "labels")}


def main() -> None:
    from transformers import DataCollatorForSeq2Seq

    from colm.data import default_mixture_dir, load_mixture, tokenize_mixture
    from colm.models.default import default_model, default_tokenizer

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()

    tokenizer = default_tokenizer()
    model = default_model(tokenizer)
    raw = load_mixture(default_mixture_dir(), split="train", max_examples_per_source=200)
    data, _ = tokenize_mixture(raw, tokenizer, max_length=128)
    collate = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    train(
        model, data.to_list(), collate, steps=args.steps, batch_size=args.batch_size,
        config=CoresetConfig(), on_step=lambda s, loss, ids: print(f"step {s:3d}  loss {loss:.4f}"),
    )


if __name__ == "__main__":
    main()
