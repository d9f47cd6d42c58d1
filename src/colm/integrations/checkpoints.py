"""Which checkpoint a resumed run starts from, and whether there is anything left to train.

The Trainer writes a `checkpoint-N` folder file by file and `trainer_state.json` last (colm's
selector state goes in before it), so a folder is *complete* when that file is there and parses.
A run killed while saving leaves a folder without it, or with a torn one. Resuming "from the
latest checkpoint" therefore means the latest complete one, and the folders passed over are
named, never silently ignored. `colm train` and `CoresetTrainer.train` both decide here.
"""
from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from colm.errors import CheckpointError

logger = logging.getLogger(__name__)

TRAINER_STATE = "trainer_state.json"
_CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")


def read_trainer_state(checkpoint: str | os.PathLike) -> dict[str, Any]:
    """The parsed trainer_state.json of a checkpoint folder.

    Raises CheckpointError naming the file when it is missing, torn (not valid JSON) or has no
    integer `global_step`.
    """
    folder = Path(checkpoint)
    if not folder.is_dir():
        raise CheckpointError(f"{checkpoint}: no such checkpoint folder")
    path = folder / TRAINER_STATE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CheckpointError(
            f"{checkpoint}: incomplete checkpoint (no {TRAINER_STATE}, which the Trainer writes "
            "last: the save was interrupted)"
        ) from None
    except UnicodeDecodeError:
        raise CheckpointError(f"{path}: not UTF-8 text (torn by an interrupted save?)") from None
    try:
        state = json.loads(text)
    except json.JSONDecodeError as err:
        raise CheckpointError(
            f"{path}: not valid JSON ({err.msg} at line {err.lineno}); the save was probably "
            "interrupted"
        ) from None
    step = state.get("global_step") if isinstance(state, dict) else None
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise CheckpointError(f"{path}: no integer 'global_step' in it")
    return state


def checkpoint_step(checkpoint: str | os.PathLike) -> int:
    """The optimizer step a checkpoint was written at (CheckpointError if it is not complete)."""
    return int(read_trainer_state(checkpoint)["global_step"])


@dataclass(frozen=True)
class ResumePoint:
    """The latest complete checkpoint of a folder, and the newer folders passed over."""

    path: str
    step: int
    state: dict[str, Any]
    #: (folder, why it was passed over) for each newer checkpoint-N folder that is incomplete.
    skipped: tuple[tuple[str, str], ...] = ()


def checkpoint_folders(output_dir: str | os.PathLike) -> list[tuple[int, str]]:
    """(N, path) of every checkpoint-N folder, newest (highest N) first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        match = _CHECKPOINT_NAME.match(entry.name)
        if match and entry.is_dir():
            found.append((int(match.group(1)), str(entry)))
    return sorted(found, reverse=True)


def incomplete_checkpoints(output_dir: str | os.PathLike) -> list[tuple[str, str]]:
    """(folder, why) of every checkpoint-N folder that cannot be resumed from."""
    bad = []
    for _, path in checkpoint_folders(output_dir):
        try:
            read_trainer_state(path)
        except CheckpointError as err:
            bad.append((path, str(err)))
    return bad


def latest_complete_checkpoint(output_dir: str | os.PathLike) -> ResumePoint | None:
    """The complete checkpoint with the highest step in `output_dir` (None if there is none).

    A folder that vanishes while it is looked at (another rank moving it aside) counts as
    incomplete.
    """
    skipped: list[tuple[str, str]] = []
    for _, path in checkpoint_folders(output_dir):
        try:
            state = read_trainer_state(path)
        except CheckpointError as err:
            skipped.append((path, str(err)))
            continue
        return ResumePoint(path, int(state["global_step"]), state, tuple(skipped))
    return None


def resume_checkpoint(resume_from_checkpoint: str | bool | None, output_dir: str) -> str | None:
    """The checkpoint folder `Trainer.train(resume_from_checkpoint=...)` should load.

    True: the latest complete checkpoint in `output_dir` (newer incomplete folders are logged as
    skipped; CheckpointError if there is none). A path: that folder, if complete. None/False:
    None (a fresh start).
    """
    if resume_from_checkpoint is None or resume_from_checkpoint is False:
        return None
    if resume_from_checkpoint is True:
        point = latest_complete_checkpoint(output_dir)
        if point is None:
            bad = incomplete_checkpoints(output_dir)
            detail = f" ({'; '.join(why for _, why in bad)})" if bad else ""
            raise CheckpointError(f"no complete checkpoint in output_dir {output_dir!r} to resume from{detail}")
        for folder, why in point.skipped:
            logger.warning("resuming from %s, not from the newer %s: %s", point.path, folder, why)
        return point.path
    path = os.fspath(resume_from_checkpoint)
    read_trainer_state(path)  # a torn or missing trainer_state.json is named now, not deep in Trainer
    return path


def check_checkpoint_files(checkpoint: str | os.PathLike) -> None:
    """Raise CheckpointError naming every file of `checkpoint` that is cut short or unreadable
    (colm.integrations.checkpoint_files), with the older complete checkpoints to resume instead."""
    from colm.integrations.checkpoint_files import damaged_files

    bad = damaged_files(checkpoint)
    if not bad:
        return
    folder = Path(checkpoint)
    listed = "; ".join(f"{path}: {why}" for path, why in bad)
    step = _CHECKPOINT_NAME.match(folder.name)
    older = []
    if step is not None:
        older = sorted((int(m.group(1)), p) for p in folder.parent.glob("checkpoint-*")
                       if (m := _CHECKPOINT_NAME.match(p.name)) and int(m.group(1)) < int(step.group(1))
                       and (p / TRAINER_STATE).is_file())
    hint = (f"; resume from an older checkpoint instead (--resume-from-checkpoint {older[-1][1]})" if older
            else "; no older checkpoint to resume from")
    raise CheckpointError(f"damaged checkpoint file(s), cut short or corrupted: {listed}{hint}")


def is_finished(state: dict[str, Any], max_steps: int, num_train_epochs: float) -> bool:
    """Whether a run whose checkpoint has `state` has no step left under these settings.

    With max_steps > 0 the step count decides. Otherwise the run is epoch-based: the checkpoint
    recorded its step total, valid while num_train_epochs is unchanged.
    """
    step = int(state["global_step"])
    if max_steps > 0:
        return step >= max_steps
    total = state.get("max_steps")
    same_epochs = float(state.get("num_train_epochs", -1)) == float(num_train_epochs)
    return isinstance(total, int) and total > 0 and same_epochs and step >= total
