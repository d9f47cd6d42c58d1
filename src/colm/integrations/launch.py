"""Whether the processes torch.distributed connects are the processes the Trainer trains with.

colm exchanges pools and features through torch.distributed whenever a process group is up,
while the Trainer shards data and averages gradients over the processes *it* knows of
(TrainingArguments.world_size, accelerate's num_processes). When they disagree the run does
not fail: e.g. `torchrun --nproc_per_node 2` on a machine without GPUs and without
`use_cpu=True` leaves transformers in single-process mode while the launcher's gloo group has
two ranks, so every pool holds each row twice and the two ranks train two different models
into one output folder. This module turns every such disagreement into one error that names
the setting that fixes it.
"""
from __future__ import annotations

import os
from typing import Any

import torch.distributed as dist


class LaunchMismatchError(ValueError):
    """torch.distributed and the Trainer disagree on the processes (or devices) of the run."""


def launched_processes() -> int:
    """Processes the launcher started: the process group's size, else torchrun/accelerate's
    WORLD_SIZE (set even when nobody has initialized the group yet), else 1."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def launch_problem(args: Any, trainer_processes: int | None = None, *, cli: bool = False) -> str | None:
    """What is wrong with this launch, or None.

    Args:
        args: the TrainingArguments.
        trainer_processes: accelerate's num_processes when a Trainer exists (else
            `args.world_size` alone is compared).
        cli: name the fix as `colm train` flags rather than Python arguments.
    """
    use_cpu = "--use-cpu true" if cli else "use_cpu=True (TrainingArguments)"
    launched = launched_processes()
    seen = {int(args.world_size)}
    if trainer_processes is not None:
        seen.add(int(trainer_processes))
    trainer_world = max(seen)
    if launched != trainer_world or len(seen) > 1:
        if launched > 1 and trainer_world == 1 and args.device.type == "cpu":
            fix = (
                f"on a machine without GPUs, pass {use_cpu} so that transformers runs its CPU "
                "data-parallel mode (gloo)"
            )
        elif launched > 1 and trainer_world == 1:
            fix = ("launch with `torchrun --nproc_per_node=N` or `accelerate launch --multi_gpu`, and keep the "
                   "script from building its own process group")
        else:
            fix = "launch every process with the same `torchrun`/`accelerate launch` command"
        return (
            f"the launcher started {launched} process(es) (torch.distributed) but the Trainer trains "
            f"with {trainer_world} (TrainingArguments.world_size {args.world_size}"
            + (f", accelerate num_processes {trainer_processes}" if trainer_processes is not None else "")
            + "): every rank would see every pool row and train its own model into the same "
            f"output folder; {fix}"
        )
    if launched > 1 and dist.is_initialized() and dist.get_backend() == "nccl" and args.device.type != "cuda":
        return (
            f"torch.distributed uses NCCL (GPUs) but the Trainer runs on {args.device}: the "
            f"exchanges would fail or copy every step; drop {use_cpu} or launch without GPUs"
        )
    return None


def check_launch(args: Any, trainer_processes: int | None = None) -> None:
    """Raise LaunchMismatchError when the launch cannot train one model (see launch_problem)."""
    problem = launch_problem(args, trainer_processes)
    if problem is not None:
        raise LaunchMismatchError(problem)
