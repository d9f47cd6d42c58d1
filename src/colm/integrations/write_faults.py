"""Name a checkpoint save that the machine refused, instead of calling it a bug.

The Trainer's save goes through safetensors and torch.save, which report a full disk as a
`SafetensorError ... (os error 28)` or, worse, as `RuntimeError [enforce fail at
inline_container.cc] unexpected pos` with no word of the disk. When a run fails while a
checkpoint folder is half written, colm looks for the OS's reason: in the error chain, else by
asking the file system itself (a small probe write, and the free space against the size of the
last complete checkpoint). Nothing is deleted: earlier checkpoints stay as they were, and the
half-written folder is moved aside by the next resume.
"""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from colm.files import WriteError, os_reason
from colm.integrations.checkpoints import (
    incomplete_checkpoints,
    latest_complete_checkpoint,
)

PROBE_BYTES = 1 << 20


def probe_reason(folder: Path) -> tuple[str, int] | None:
    """The OS's reason a small write into `folder` fails now; None when it succeeds."""
    probe = folder / ".colm-write-probe"
    try:
        with open(probe, "wb") as handle:
            handle.write(b"\0" * PROBE_BYTES)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as err:
        return (err.strerror or str(err)).lower(), err.errno or 0
    finally:
        try:
            probe.unlink()
        except OSError:
            pass
    return None


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def failed_save(out: Path, err: BaseException, resumed_at: int | None) -> WriteError | None:
    """A WriteError describing the checkpoint save `err` interrupted, or None when `err` did not
    happen while a checkpoint was written, or no machine reason can be found for it."""
    torn = [Path(folder) for folder, _ in incomplete_checkpoints(out)]
    torn = [f for f in torn if int(f.name.rsplit("-", 1)[1]) > (resumed_at or 0)]
    if not torn:
        return None
    folder = max(torn, key=lambda f: int(f.name.rsplit("-", 1)[1]))
    reason = os_reason(err) or probe_reason(folder)
    good = latest_complete_checkpoint(out)
    if reason is None and good is not None:
        free, needed = shutil.disk_usage(folder).free, _folder_bytes(Path(good.path))
        if free < needed:
            why = (f"{os.strerror(errno.ENOSPC).lower()} ({free / 2**20:.1f} MiB free, a checkpoint "
                   f"takes {needed / 2**20:.1f} MiB)")
            reason = (why, errno.ENOSPC)
    if reason is None:
        return None
    kept = (f"the earlier checkpoints are intact (latest: {Path(good.path).name}); fix it and resume "
            "with --resume-from-checkpoint true" if good is not None else
            "no earlier checkpoint; fix it and rerun with --overwrite-output-dir")
    return WriteError(f"saving {folder.name}", folder, f"{reason[0]}; {kept}", reason[1])
