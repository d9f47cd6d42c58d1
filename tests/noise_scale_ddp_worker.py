"""One rank of the 2-process noise-scale check in test_noise_scale.py (launched by torchrun).

Learning rate 0 keeps the weights put, so each measured step's gradients are recomputed here by
brute force from the micro-batches the model saw, and written next to what the callback read."""
from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))
from trainer_helpers import collator, mixture, tiny_llama, training_args  # noqa: E402

from colm import CoresetConfig, CoresetTrainer  # noqa: E402


def flat_grad(model, kwargs, world):
    model.zero_grad()
    # the Trainer's loss: normalized by the step's tokens over all ranks, times the world size
    # (average_tokens_across_devices), which DDP's mean over ranks undoes
    (model(**kwargs).loss * world).backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).double()


def run(out: Path, accumulation: int) -> None:
    trainer = CoresetTrainer(
        model=tiny_llama(), args=training_args(out, per_device_train_batch_size=2, max_steps=3, learning_rate=0.0,
                                               gradient_accumulation_steps=accumulation, ddp_backend="gloo",
                                               max_grad_norm=1e6),
        train_dataset=mixture({"big_a": 60, "big_b": 50, "rare": 10}), data_collator=collator(),
        coreset_config=CoresetConfig(pool_factor=2), noise_scale_every=1,
    )
    seen: list[dict] = []
    trainer.model.register_forward_pre_hook(
        lambda m, a, kw: seen.append({k: v.detach().clone() if torch.is_tensor(v) else v for k, v in kw.items()})
        if m.training and torch.is_grad_enabled() else None, with_kwargs=True)
    trainer.train()
    world, rank = dist.get_world_size(), dist.get_rank()
    model = copy.deepcopy(trainer.model).train()
    rows = []
    for step, h in enumerate(trainer.noise_scale.history):
        micro = seen[accumulation * step : accumulation * (step + 1)]
        grads = [flat_grad(model, kw, world) for kw in micro]
        local = sum(grads)
        if accumulation == 1:
            gathered = [torch.zeros_like(local) for _ in range(world)]
            dist.all_gather(gathered, local)
            small, big = local, sum(gathered) / world
        else:
            tokens = [float((kw["labels"][:, 1:] != -100).sum()) for kw in micro]
            small, big = grads[0] / (tokens[0] / sum(tokens)), local
        rows.append({"read_small": h["grad_sq_small"], "read_big": h["grad_sq_big"],
                     "brute_small": float(small.square().sum()), "brute_big": float(big.square().sum()),
                     "b_small": h["b_small"], "b_big": h["b_big"], "b_simple": h["b_simple"]})
    (out / f"rank{rank}.json").write_text(json.dumps({"world": world, "steps": rows}))


if __name__ == "__main__":
    out = Path(sys.argv[1])
    for accumulation in (1, 2):
        (out / f"ga{accumulation}").mkdir(parents=True, exist_ok=True)
        run(out / f"ga{accumulation}", accumulation)
