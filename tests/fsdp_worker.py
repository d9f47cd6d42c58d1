"""FSDP2 cases for one rank of the 2-process torchrun launch in test_distributed.py.

ddp_worker.py runs these variants in the same launch (starting processes is most of a launch's
time); each writes OUT/rank<r>.json, checked by test_fsdp.py:

* ``fsdp-features``: zo, exact and hidden features of a model sharded with ``fully_shard`` (each rank
  scores its half of the pool, ``gather=True``) against those of an unsharded copy scoring the
  whole pool locally; the facility-location selections on both; every all-gather FSDP made during
  the sharded scoring (which block, and which other blocks were gathered at that moment).
* ``fsdp-train``: the plain-loop recipe (features, selection, a step on the coreset) for a few
  steps on a sharded model and on a DDP copy of the same initial model: per-step losses and the
  final full parameters.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.fsdp._fully_shard._fsdp_param_group import FSDPParamGroup
from torch.nn.parallel import DistributedDataParallel
from trainer_helpers import collator, mixture, tiny_llama

from colm import CoresetConfig, CoresetSelector, gradient_features

SIZES = {"big_a": 24, "big_b": 20, "rare": 4}
POOL = 16  # global pool per step: 8 rows per rank
CORESET = 8


def shard(model: torch.nn.Module) -> torch.nn.Module:
    """The layout accelerate's FSDP2 plugin builds with TRANSFORMER_BASED_WRAP: one group per
    decoder layer, then the root (embeddings, final norm, LM head)."""
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    return model


def rows_of_step(step: int) -> list[dict]:
    data = mixture(SIZES, seed=1)
    start = (step * POOL) % (len(data) - POOL)
    return [data[i] for i in range(start, start + POOL)]


def collate(rows: list[dict]) -> dict[str, torch.Tensor]:
    return collator()([{k: r[k] for k in ("input_ids", "labels")} for r in rows])


def local_half(rows: list[dict]) -> list[dict]:
    """This rank's consecutive half of the pool: gather_rows concatenates in rank order."""
    half = len(rows) // dist.get_world_size()
    return rows[dist.get_rank() * half:(dist.get_rank() + 1) * half]


class GatherLog:
    """Every all-gather FSDP2 makes: the group's module name, its parameter count, and the
    decoder-layer groups gathered at that moment (patched into FSDPParamGroup.unshard)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.groups = {
            name: group
            for name, module in model.named_modules() if isinstance(module, FSDPModule)
            for group in module._get_fsdp_state()._fsdp_param_groups
        }
        self.events: list[dict] = []
        self._original = FSDPParamGroup.unshard

    def __enter__(self) -> GatherLog:
        log = self

        def unshard(group, async_op=False):
            if not group.is_unsharded and group._all_gather_result is None:
                name = next(n for n, g in log.groups.items() if g is group)
                others = [n for n, g in log.groups.items() if g is not group and n and g.is_unsharded]
                log.events.append({"module": name,
                                   "shard_numel": sum(p.sharded_param.numel() for p in group.fsdp_params),
                                   "other_blocks_gathered": others})
            return log._original(group, async_op)

        FSDPParamGroup.unshard = unshard
        return self

    def __exit__(self, *exc) -> None:
        FSDPParamGroup.unshard = self._original


def digest(model: torch.nn.Module) -> str:
    """Of the full parameters (a gathered group registers full tensors, a sharded one DTensors)."""
    h = hashlib.sha256()
    for _, p in sorted(full_state(model).items()):
        h.update(p.numpy().tobytes())
    return h.hexdigest()


def full_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
            for n, p in model.named_parameters()}


def features_case(out: Path) -> dict:
    result = {}
    for feature in ("zo", "exact", "hidden"):
        config = CoresetConfig(within_source="facility_location", feature=feature, zo_probes=2, pool_factor=2)
        reference = tiny_llama(seed=3)
        sharded = shard(copy.deepcopy(reference))
        entry = {"features": {}, "selections": {}, "gathers": [], "unchanged": True}
        for step in range(2):
            rows = rows_of_step(step)
            sources = [r["source"] for r in rows]
            # the unsharded copy scores each rank's half as that rank collates it (same padding)
            halves = [rows[:len(rows) // 2], rows[len(rows) // 2:]]
            expected = torch.cat([gradient_features(reference, collate(h), config, step=step) for h in halves])  # [16, d]
            before = digest(sharded)
            with GatherLog(sharded) as log:
                got = gradient_features(sharded, collate(local_half(rows)), config, step=step, gather=True)
            entry["unchanged"] &= before == digest(sharded)
            entry["gathers"].append(log.events)
            scale = expected.abs().max().item()
            entry["features"][step] = {"max_abs_diff": (got - expected).abs().max().item(), "scale": scale,
                                       "shape": list(got.shape)}
            pick = lambda f: CoresetSelector(config, SIZES).select(f, sources, CORESET).indices.tolist()
            entry["selections"][step] = {"unsharded": pick(expected), "sharded": pick(got)}
        entry["layers"] = len(reference.model.layers)
        entry["hidden_size"] = reference.config.hidden_size
        result[feature] = entry
    return result


def train_case(out: Path, steps: int = 3) -> dict:
    result = {}
    for method in ("random", "zo"):
        config = (CoresetConfig(pool_factor=2) if method == "random"
                  else CoresetConfig(within_source="facility_location", feature="zo", zo_probes=2, pool_factor=2))
        init = tiny_llama(seed=5)
        fsdp_model = shard(copy.deepcopy(init))
        ddp_model = DistributedDataParallel(copy.deepcopy(init))
        runs = {}
        for name, model, scored in (("fsdp", fsdp_model, fsdp_model), ("ddp", ddp_model, ddp_model.module)):
            torch.manual_seed(0)
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
            selector = CoresetSelector(config, SIZES)
            losses, selections = [], []
            for step in range(steps):
                rows = rows_of_step(step)
                mine = local_half(rows)
                features = (gradient_features(scored, collate(mine), config, step=step, gather=True)
                            if config.needs_features else None)
                chosen = selector.select(features, [r["source"] for r in rows], CORESET).indices.tolist()
                selections.append(chosen)
                share = local_half([rows[i] for i in chosen])  # each rank trains on half the coreset
                model.train()
                loss = model(**collate(share)).loss
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(loss.item())
            runs[name] = {"losses": losses, "selections": selections}
        fsdp_state, ddp_state = full_state(fsdp_model), full_state(ddp_model.module)
        runs["max_param_diff"] = max((fsdp_state[n] - ddp_state[n]).abs().max().item() for n in ddp_state)
        result[method] = runs
    return result


def trainer_on_cpu_case(out: Path) -> dict:
    """FSDP2 asked of the Trainer the way transformers documents it, on this CPU machine:
    accelerate would silently run DDP; CoresetTrainer must refuse instead."""
    from transformers import TrainingArguments

    from colm import CoresetTrainer

    args = TrainingArguments(str(out), use_cpu=True, ddp_backend="gloo", report_to=[], max_steps=1,
                             per_device_train_batch_size=2, fsdp=True,
                             fsdp_config={"fsdp_version": 2, "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"]})
    try:
        CoresetTrainer(model=tiny_llama(), args=args, train_dataset=mixture(SIZES), data_collator=collator(),
                       coreset_config=CoresetConfig(pool_factor=2))
    except ValueError as err:
        return {"error": type(err).__name__, "message": str(err)}
    return {"error": None}


def run_fsdp_variant(out: Path, variant: str) -> None:
    if not dist.is_initialized():  # the Trainer variants before this one may have set it up
        dist.init_process_group("gloo")
    result = {"fsdp-features": features_case, "fsdp-train": train_case,
              "fsdp-trainer-cpu": trainer_on_cpu_case}[variant](out)
    rank = int(os.environ.get("RANK", 0))
    (out / f"rank{rank}.json").write_text(json.dumps({"world": dist.get_world_size(), **result}))
