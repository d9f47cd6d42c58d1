"""One rank of the 2-process CoresetTrainer run in test_distributed.py (launched by torchrun)."""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import torch
from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).parent))
from trainer_helpers import collator, mixture, separable, tiny_llama, training_args  # noqa: E402

from colm import CoresetConfig, CoresetTrainer  # noqa: E402


class SelectionLog(TrainerCallback):
    def __init__(self, trainer_ref):
        self.trainer_ref, self.steps = trainer_ref, []

    def on_step_end(self, args, state, control, **kw):
        sel = self.trainer_ref[0].last_selection
        self.steps.append(sel.indices.tolist())


def run_variant(out: Path, variant: str) -> None:
    # "zo" / "exact": facility location on those features; "random-example": the stratified
    # control (no features exchanged) with every example weighing the same in the loss;
    # "stream": zo on a datasets.IterableDataset each rank reads and keeps its share of;
    # "no-use-cpu": the launch the Trainer cannot see on a CPU machine (use_cpu left False);
    # "pseudo": k-means pseudo-sources after 2 warm-up steps, on sources a model tells apart
    settings = (dict(within_source="random", loss_average="example") if variant == "random-example"
                else dict(within_source="facility_location", feature="zo", pseudo_sources=3,
                          pseudo_source_warmup_steps=2) if variant == "pseudo"
                else dict(within_source="facility_location", feature="zo") if variant in ("no-use-cpu", "stream")
                else dict(within_source="facility_location", feature=variant))
    launch = dict(ddp_backend=None, use_cpu=False) if variant == "no-use-cpu" else dict(ddp_backend="gloo")
    sizes = {"big_a": 60, "big_b": 50, "rare": 10}
    data = separable(sizes) if variant == "pseudo" else mixture(sizes)
    if variant == "stream":
        data = data.to_iterable_dataset()
    ref: list = [None]
    log = SelectionLog(ref)
    trainer = CoresetTrainer(
        model=tiny_llama(), args=training_args(out, per_device_train_batch_size=2, max_steps=4,
                                               **launch),
        train_dataset=data, source_sizes=sizes if variant == "stream" else None, data_collator=collator(),
        coreset_config=CoresetConfig(pool_factor=2, zo_probes=2, **settings), callbacks=[log],
        log_selections=variant == "stream",
    )
    ref[0] = trainer
    trainer.train()
    digest = hashlib.sha256()
    for _, p in sorted(trainer.model.named_parameters()):
        digest.update(p.detach().cpu().numpy().tobytes())
    rank = int(os.environ.get("RANK", 0))
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    (out / f"rank{rank}.json").write_text(json.dumps(
        {"world": world, "selections": log.steps, "weights_sha256": digest.hexdigest(),
         "steps": trainer.state.global_step,
         "pseudo_sources": None if trainer.pseudo_sources is None else {
             "assignment": trainer.pseudo_sources.state.assignment.tolist(),
             "centroids": trainer.pseudo_sources.state.centroids.tolist(), "sources": list(data["source"])}}
    ))


def main() -> None:
    """argv: OUT VARIANT[,VARIANT...]: the variants run one after another in the same process
    group (one launch: most of a launch's time is starting the processes), each into OUT/VARIANT
    (a single variant writes into OUT itself)."""
    out = Path(sys.argv[1])
    variants = (sys.argv[2] if len(sys.argv) > 2 else "zo").split(",")
    for variant in variants:
        target = out if len(variants) == 1 else out / variant
        target.mkdir(parents=True, exist_ok=True)
        if variant.startswith("fsdp-"):
            from fsdp_worker import run_fsdp_variant

            run_fsdp_variant(target, variant)
        else:
            run_variant(target, variant)


if __name__ == "__main__":
    main()
