"""Files written so that a crash or Ctrl-C never leaves a half-written one."""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to a temporary file next to `path`, then rename it into place.

    Readers see the old file or the new one, never a prefix of it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    """`atomic_write_text` of `data` as indented JSON (non-JSON values become strings, and NaN or
    infinite numbers null: JSON has no NaN, and strict readers reject the file otherwise)."""
    text = json.dumps(finite_json(data), indent=2, sort_keys=False, default=str, allow_nan=False)
    atomic_write_text(path, text + "\n")


def finite_json(data: Any) -> Any:
    """`data` with every NaN or infinite float (at any depth) replaced by None."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: finite_json(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite_json(v) for v in data]
    return data


def append_jsonl(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append one JSON line (flushed at once, so `tail -f` follows a running job)."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, default=str) + "\n")


def read_jsonl(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """The JSON objects of a JSONL file; a torn last line (a killed writer) is skipped."""
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


def truncate_jsonl(path: str | os.PathLike, last_step: int) -> None:
    """Drop the lines of a per-step JSONL log whose "step" is past `last_step` (a resumed run
    writes them again); atomic, and a no-op when the file does not exist."""
    if os.path.isfile(path):
        kept = [json.dumps(r) for r in read_jsonl(path) if int(r.get("step", 0)) <= last_step]
        atomic_write_text(path, "".join(line + "\n" for line in kept))


def default_cache_dir() -> Path:
    """$COLM_CACHE, else ~/.cache/colm."""
    return Path(os.environ.get("COLM_CACHE") or Path.home() / ".cache" / "colm").expanduser()
