"""Files written so that a crash or Ctrl-C never leaves a half-written one, and a write the
machine refuses (disk full, no permission, read-only file system) says what, where and why."""
from __future__ import annotations

import errno as errno_codes
import json
import math
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class WriteError(OSError):
    """A write the machine refused: `<what>, <path>: <the OS's reason>` (one line)."""

    def __init__(self, what: str, path: str | os.PathLike, reason: str, code: int | None = None) -> None:
        super().__init__(f"{what}, {path}: {reason}")
        self.what, self.path, self.reason, self.code = what, str(path), reason, code


# Libraries that wrap an OS error in their own type keep only its text: "(os error 28)" (Rust's
# std::io::Error, as safetensors reports it) or the C library's message.
_OS_ERROR_NUMBER = re.compile(r"\(os error (\d+)\)|\[Errno (\d+)\]")
_WRITE_ERRNOS = (errno_codes.ENOSPC, errno_codes.EDQUOT, errno_codes.EROFS, errno_codes.EACCES,
                 errno_codes.EPERM, errno_codes.EFBIG, errno_codes.EIO)


def os_reason(err: BaseException) -> tuple[str, int | None] | None:
    """(the OS's reason in lower case, errno) behind `err` or the errors it came from; None when
    nothing in the chain is an OS error."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, WriteError):
            return current.reason, current.code
        if isinstance(current, OSError) and current.errno is not None:
            return (current.strerror or os.strerror(current.errno)).lower(), current.errno
        match = _OS_ERROR_NUMBER.search(str(current))
        if match is not None:
            code = int(match.group(1) or match.group(2))
            if code in _WRITE_ERRNOS:
                return os.strerror(code).lower(), code
        current = current.__cause__ or current.__context__
    return None


@contextmanager
def writing(what: str, path: str | os.PathLike) -> Iterator[None]:
    """Turn an OSError raised inside into a WriteError naming `what` and `path`."""
    try:
        yield
    except WriteError:
        raise
    except OSError as err:
        reason, code = os_reason(err) or (str(err), None)
        raise WriteError(what, path, reason, code) from err


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to a temporary file next to `path`, then rename it into place.

    Readers see the old file or the new one, never a prefix of it.
    """
    path = Path(path)
    with writing(f"writing {path.name}", path):
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
    with writing(f"appending to {Path(path).name}", path):
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
