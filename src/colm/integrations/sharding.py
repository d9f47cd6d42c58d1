"""Which ways of sharding a model colm trains with, and one clear error for the others.

Supported: data parallelism (DDP) and FSDP2 (``torch.distributed.fsdp.fully_shard``), whose
sharded last block the feature replay knows how to gather (colm/features/sharded.py). Refused,
until the replay handles them: FSDP1 (``FullyShardedDataParallel``: flat parameters, the replay
would perturb a flattened shard) and DeepSpeed ZeRO (parameters partitioned outside torch's
module hooks). A request for FSDP that accelerate does not honour is refused as well: on a machine
without GPUs accelerate silently runs plain data parallelism instead (every rank holding the whole
model), which a user who asked for sharding would only find out when memory runs out.

The request is read where transformers and accelerate take it: ``TrainingArguments(fsdp=...,
fsdp_config={"fsdp_version": ...}, deepspeed=...)`` and the environment ``accelerate launch``
sets (``ACCELERATE_USE_FSDP``, ``FSDP_VERSION``, ``ACCELERATE_USE_DEEPSPEED``); once a Trainer
exists, also what its accelerator actually does.
"""
from __future__ import annotations

import os
from typing import Any

SUPPORTED = (
    "colm supports data parallelism (torchrun, `accelerate launch --multi_gpu`) and FSDP2 on GPUs: "
    "TrainingArguments(fsdp=True, fsdp_config={'fsdp_version': 2}) or `accelerate launch --use_fsdp "
    "--fsdp_version 2` (or fully_shard in your own training loop, which also works on CPU)"
)


class ShardingNotSupportedError(ValueError):
    """The run asks for a kind of sharding colm does not train with."""


def _env_true(name: str) -> bool:
    return os.environ.get(name, "false").strip().lower() in ("1", "true", "yes")


def _fsdp_version(args: Any) -> int | None:
    """The FSDP version the run asks for, or None when it asks for none."""
    if getattr(args, "fsdp", None):
        config = getattr(args, "fsdp_config", None) or {}
        # transformers strips the "fsdp_" prefix of fsdp_config keys in __post_init__
        return int(config.get("version", config.get("fsdp_version", 2)))
    if _env_true("ACCELERATE_USE_FSDP"):
        return int(os.environ.get("FSDP_VERSION", "1"))  # accelerate's own default is FSDP1
    return None


def sharding_problem(args: Any, accelerator: Any = None) -> str | None:
    """What colm cannot train with in this run's sharding, or None.

    Args:
        args: the TrainingArguments.
        accelerator: the Trainer's accelerator, once it exists (what accelerate really does).
    """
    state = getattr(accelerator, "state", None)
    distributed_type = str(getattr(state, "distributed_type", ""))
    deepspeed = getattr(args, "deepspeed", None) or _env_true("ACCELERATE_USE_DEEPSPEED")
    if deepspeed or distributed_type.endswith("DEEPSPEED"):
        return ("DeepSpeed (ZeRO) is not supported: the feature replay cannot gather its partitioned "
                f"parameters. {SUPPORTED}")
    config = getattr(args, "fsdp_config", None) or {}
    if getattr(args, "fsdp", None) and config.get("xla"):
        return f"FSDP on XLA is not supported. {SUPPORTED}"
    version = _fsdp_version(args)
    plugin = getattr(state, "fsdp_plugin", None)
    if plugin is not None:
        version = int(getattr(plugin, "fsdp_version", version or 1))
    if version == 1:
        return (
            "FSDP1 (fsdp_version 1, FullyShardedDataParallel) is not supported: its flat parameters "
            f"hide the last block's weights from the feature replay. {SUPPORTED}"
        )
    device = getattr(getattr(args, "device", None), "type", None)
    if version is not None and plugin is None and (state is not None or device == "cpu"):
        return (
            f"FSDP2 was asked for but accelerate does not run FSDP on {device or 'this device'} "
            "(it would silently fall back to plain data parallelism, every rank holding the whole "
            f"model). Drop the FSDP setting to train data-parallel, or run on GPUs. {SUPPORTED}"
        )
    return None


def check_sharding(args: Any, accelerator: Any = None) -> None:
    """Raise ShardingNotSupportedError when colm cannot train with the run's sharding."""
    problem = sharding_problem(args, accelerator)
    if problem is not None:
        raise ShardingNotSupportedError(problem)
