"""The output folder of a `colm train` run: locked, checked for a previous run, resumed.

Everything here happens under the folder's lock (colm.cli.lock) and before the model or data
load, so a second run, a folder that already holds a run, or a checkpoint that cannot be resumed
is refused at once, and nothing has been written when it is.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from colm.cli.errors import UsageError
from colm.cli.lock import OutputDirLock
from colm.integrations.checkpoints import (
    CheckpointError,
    ResumePoint,
    incomplete_checkpoints,
    is_finished,
    latest_complete_checkpoint,
    read_trainer_state,
)

#: Files of a previous run that --overwrite-output-dir replaces (with its checkpoint folders).
RUN_FILES = ("metrics.jsonl", "selections.jsonl", "report.json", "report.md", "colm_run.json",
             "colm_identity.json")
#: Files a run writes before its first step: alone in a folder, they are no run to protect (one
#: killed before it trained anything).
START_FILES = ("colm_run.json", "colm_identity.json")
#: What to do with a folder that holds a run with nothing to resume from: the one instruction
#: both a plain rerun and --resume-from-checkpoint give.
START_OVER = "pass --overwrite-output-dir to start over (or choose another --output-dir)"
#: An incomplete checkpoint-N passed over by a resume is renamed with this prefix: out of the
#: Trainer's `checkpoint-*` rotation, which would otherwise count it as the newest checkpoint.
MOVED_ASIDE = "incomplete-"
#: Values of --resume-from-checkpoint that mean "the latest checkpoint of --output-dir".
LATEST = ("true", "last", "yes", "1")


@dataclass
class RunDir:
    """What `claim` found: a fresh run, a resume from a checkpoint, or a finished run."""

    path: Path
    #: The checkpoint folder this run continues from (None: a fresh start).
    resume_from: str | None = None
    resume_step: int | None = None
    #: Set when --resume-from-checkpoint points at a run with no step left to train.
    finished: ResumePoint | None = None


def is_main_process() -> bool:
    """Rank 0 under torchrun (or no launcher): the one process that owns the folder."""
    return os.environ.get("RANK", "0") == "0"


@contextmanager
def claim(
    out: Path, *, overwrite: bool, resume: str | None, max_steps: int, num_train_epochs: float,
    command: str,
) -> Iterator[RunDir]:
    """Hold `out` for the life of the run and decide where the run starts."""
    lock = OutputDirLock(out, "--output-dir", "colm train", command=command)
    if is_main_process():
        lock.acquire()
    try:
        if lock.taken_over is not None:
            print(lock.takeover_note(), flush=True)
        yield _resolve(out, overwrite, resume, max_steps, num_train_epochs)
    finally:
        lock.release()


def _resolve(out: Path, overwrite: bool, resume: str | None, max_steps: int, num_train_epochs: float) -> RunDir:
    run = RunDir(out)
    from colm.cli import ownership

    ownership.check(out, "colm train", overwrite)  # a colm compare or demo's results are not a run
    if resume is None:
        previous = previous_run(out)
        if previous and not overwrite:
            shown = ", ".join(previous[:4]) + (", ..." if len(previous) > 4 else "")
            if latest_complete_checkpoint(out) is None:  # resuming would be refused too
                raise UsageError(
                    f"--output-dir {out} holds a run with no complete checkpoint to resume from "
                    f"({shown}); {START_OVER}"
                )
            raise UsageError(
                f"--output-dir {out} already holds a run ({shown}); pass --overwrite-output-dir to "
                "replace it, --resume-from-checkpoint true to continue it, or another --output-dir"
            )
        return run
    if str(resume).lower() in LATEST:
        point = latest_complete_checkpoint(out)
        if point is None:
            bad = incomplete_checkpoints(out)
            detail = f" ({'; '.join(why for _, why in bad)})" if bad else ""
            raise UsageError(
                f"--resume-from-checkpoint {resume}: no complete checkpoint-N folder in {out} to "
                f"resume from{detail}; {START_OVER}"
            )
    else:
        try:
            state = read_trainer_state(resume)
        except CheckpointError as err:
            raise UsageError(f"--resume-from-checkpoint: {err}") from None
        point = ResumePoint(str(resume), int(state["global_step"]), state)
    if is_finished(point.state, max_steps, num_train_epochs):
        run.finished = point
        return run
    for folder, why in point.skipped:
        moved = move_aside(Path(folder)) if is_main_process() else None
        print(f"colm train: note: resuming from {Path(point.path).name}, not from the newer "
              f"{Path(folder).name}: {why}" + (f"; moved it aside to {moved.name}" if moved else ""),
              flush=True)
    run.resume_from, run.resume_step = point.path, point.step
    return run


def move_aside(folder: Path) -> Path:
    """Rename an incomplete checkpoint folder out of the `checkpoint-*` namespace (kept, not
    deleted: its model files may still be worth a look)."""
    target = folder.with_name(MOVED_ASIDE + folder.name)
    n = 2
    while target.exists():
        target = folder.with_name(f"{MOVED_ASIDE}{folder.name}-{n}")
        n += 1
    folder.rename(target)
    return target


def previous_run(out: Path) -> list[str]:
    """Names of a previous run's files and checkpoint folders in `out`."""
    if not out.is_dir():
        return []
    found = [name for name in RUN_FILES if (out / name).exists()]
    for pattern in ("checkpoint-*", MOVED_ASIDE + "checkpoint-*"):
        found += sorted(p.name for p in out.glob(pattern) if p.is_dir())
    if set(found) <= set(START_FILES):
        return []  # a run that ended before its first step left nothing worth keeping
    return found


def clear_previous_run(out: Path) -> None:
    """Delete a previous run's files and checkpoints (--overwrite-output-dir)."""
    from colm.cli.ownership import RESULT_FILES

    for name in (*RUN_FILES, *RESULT_FILES):  # and another command's results it replaces
        (out / name).unlink(missing_ok=True)
    for pattern in ("checkpoint-*", MOVED_ASIDE + "checkpoint-*"):
        for folder in out.glob(pattern):
            shutil.rmtree(folder, ignore_errors=True)


def forget_failed_start(out: Path) -> None:
    """Remove what a fresh run wrote when it failed before its first step (the run marker,
    empty logs), so the next run into the folder is not refused for it. Never touches a folder
    that has a checkpoint."""
    if any(out.glob("checkpoint-*")):
        return
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)


def finished_message(run: RunDir, max_steps: int, num_train_epochs: float) -> str:
    """What `colm train` prints instead of training when the run is already finished."""
    point = run.finished
    assert point is not None
    if max_steps > 0:
        limit, raise_it = f"--max-steps is {max_steps}", "--max-steps"
    else:
        limit = f"the run ends there with --num-train-epochs {num_train_epochs}"
        raise_it = "--num-train-epochs"
    lines = [
        f"colm train: {run.path} is already finished: its latest checkpoint, {Path(point.path).name}, "
        f"is at step {point.step} and {limit}; nothing to train (raise {raise_it} to train further, "
        "or pass --overwrite-output-dir to start over)"
    ]
    if not (run.path / "report.json").is_file():
        lines.append(
            f"colm train: note: the run stopped after its last checkpoint, before writing its final "
            f"model and report; the final weights are in {point.path}"
        )
    return "\n".join(lines)
