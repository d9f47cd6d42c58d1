"""Which colm command's results an output folder holds, so no command overwrites another's.

`colm train`, `colm compare` and `colm demo` all write `report.md` and `report.json`; pointed at
one folder, the second used to replace the first's report without a word. Each command now
checks, under the folder's lock and before anything loads, whose results the folder holds:
another command's are kept unless `--overwrite-output-dir` is given, which removes them (once
everything has loaded, before the first write), so no previous report is left beside the new
results if the new command is interrupted.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from colm.cli.errors import UsageError

COMMANDS = ("colm train", "colm compare", "colm demo")
#: Files that say a train run lives in the folder (also when its report is not written yet).
TRAIN_MARKS = ("colm_run.json", "metrics.jsonl")
#: Every file a command writes at the folder's top level, removed by --overwrite-output-dir.
RESULT_FILES = ("report.md", "report.json", "results.jsonl", "compare.png", "val_loss.png",
                "per_source_loss.png", "selection_share.png", "metrics.jsonl", "selections.jsonl",
                "colm_run.json", "colm_identity.json")


def _report_command(out: Path) -> str | None:
    try:
        report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(report, dict):
        return None
    settings = report.get("settings")
    text = report.get("command") or (settings.get("command") if isinstance(settings, dict) else None)
    if not isinstance(text, str):
        return None
    return next((c for c in COMMANDS if text == c or text.startswith(c + " ")), None)


def owner(out: Path) -> tuple[str, list[str]] | None:
    """(the command whose results `out` holds, the files that show it), or None."""
    if not out.is_dir():
        return None
    found = [name for name in RESULT_FILES if (out / name).is_file()]
    found += sorted(p.name for p in out.glob("checkpoint-*") if p.is_dir())
    command = _report_command(out)
    if command is None:
        if (out / "results.jsonl").is_file():
            command = "colm compare"
        elif any((out / name).is_file() for name in TRAIN_MARKS) or any(out.glob("checkpoint-*")):
            command = "colm train"
    return (command, found) if command is not None else None


def check(out: Path, command: str, overwrite: bool) -> None:
    """Refuse to write `command`'s results into a folder holding another command's, unless
    `overwrite` (the command then calls `clear` once everything has loaded, before it writes)."""
    held = owner(out)
    if held is None or held[0] == command:
        return
    other, files = held
    if not overwrite:
        shown = ", ".join(files[:5]) + (", ..." if len(files) > 5 else "")
        raise UsageError(
            f"--output-dir {out} holds the results of {other} ({shown}); {command} would overwrite "
            "them: choose another --output-dir, or pass --overwrite-output-dir to replace them")


def clear(out: Path) -> None:
    """Remove every command's top-level results and checkpoints from `out` (--overwrite-output-dir)."""
    for name in RESULT_FILES:
        (out / name).unlink(missing_ok=True)
    for pattern in ("checkpoint-*", "incomplete-checkpoint-*"):
        for folder in out.glob(pattern):
            if folder.is_dir():
                shutil.rmtree(folder, ignore_errors=True)
