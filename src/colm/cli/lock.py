"""One run per output folder: an exclusive lock held for the whole life of a command.

The lock is `fcntl.flock` on `<folder>/.colm.lock`. The kernel drops it when the holder exits in
any way, kill -9 included, so a lock file that a killed run left behind is simply not locked:
the next run takes it over (and says whose it was). No pid guessing, no stale-lock timeout. The
file records the holder's pid, host, start time and command only so that a refusal can name it.

flock locks belong to an open file, not to a process, so a second run in the same process (the
tests drive the CLI in-process) is refused too.

On NFS, Linux implements flock with NFS byte-range locks: they hold between machines when the
server supports locking (NFSv4, or NFSv3 with lockd) and only between processes of one machine on
a mount with `nolock`. Without fcntl (Windows) there is no lock, and a warning says so.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from colm.cli.errors import UsageError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".colm.lock"


class OutputDirLock:
    """Exclusive use of a run's output folder; creates the folder if needed.

    `with OutputDirLock(path, "--output-dir", "colm train", command=...):` refuses (UsageError
    naming the option and the other run's pid, host and `command`) when another run holds it. On
    release the lock file is removed,
    and so are the folders the lock created if they are still empty, so a command that fails
    before writing anything leaves nothing behind.
    """

    def __init__(
        self, folder: str | os.PathLike, option: str = "--output-dir", prog: str = "colm",
        command: str | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.option = option
        self.prog = prog
        self.command = command or prog
        self.path = self.folder / LOCK_FILE
        #: What the lock file said when a previous holder died without releasing it (else None).
        self.taken_over: dict[str, Any] | None = None
        self._fd: int | None = None
        self._created: list[Path] = []

    # ---- acquire
    def acquire(self) -> OutputDirLock:
        self._make_folder()
        try:
            if fcntl is None:  # pragma: no cover - Windows
                sys.stderr.write(f"{self.prog}: warning: no file locking on this platform; "
                                 f"nothing stops two runs from sharing {self.option} {self.folder}\n")
                return self
            while self._fd is None:
                self._try_lock()
            return self
        except BaseException:
            self._remove_created()
            raise

    def _make_folder(self) -> None:
        where = f"{self.option} {self.folder}"
        if self.folder.exists() and not self.folder.is_dir():
            raise UsageError(f"{where}: exists and is not a folder")
        missing = []
        for parent in (self.folder, *self.folder.parents):
            if parent.exists():
                if not parent.is_dir():
                    raise UsageError(f"{where}: {parent} is a file, not a folder")
                break
            missing.append(parent)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UsageError(f"{where}: cannot create the folder ({err.strerror})") from None
        self._created = missing  # deepest first

    def _try_lock(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise UsageError(f"{self.option} {self.folder}: cannot write in it ({err.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_info(fd)
            os.close(fd)
            raise UsageError(
                f"{self.option} {self.folder}: another colm run is using it ({_describe(holder)}); "
                f"wait for it to finish, or choose another {self.option}"
            ) from None
        except OSError as err:  # e.g. a file system without lock support
            os.close(fd)
            raise UsageError(f"{self.option} {self.folder}: cannot lock {self.path} ({err.strerror})") from None
        # The previous holder may have unlinked the file between our open and our lock: then we
        # hold a lock on a file nobody else will open. Start over on the current file.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(self.path))
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            return
        previous = _read_info(fd)
        if previous:  # a holder that ended without releasing: killed, or its machine died
            self.taken_over = previous
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": self.command}
        data = json.dumps(info).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        self._fd = fd

    # ---- release
    def release(self) -> None:
        if self._fd is not None:
            # Unlink while still holding the lock, so a waiting run never locks a dead file.
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
            os.close(self._fd)
            self._fd = None
        self._remove_created()

    def _remove_created(self) -> None:
        for folder in self._created:
            try:
                folder.rmdir()  # only if empty: a run that wrote something keeps its folder
            except OSError:
                break
        self._created = []

    def __enter__(self) -> OutputDirLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def takeover_note(self) -> str | None:
        """A line saying whose stale lock was taken over, or None."""
        if self.taken_over is None:
            return None
        return (f"{self.prog}: note: {self.option} {self.folder} was locked by a run that ended "
                f"without releasing it ({_describe(self.taken_over)}); taking it over")


def _read_info(fd: int) -> dict[str, Any]:
    try:
        raw = os.pread(fd, 4096, 0)
        info = json.loads(raw.decode("utf-8")) if raw.strip() else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {"unreadable": True}
    return info if isinstance(info, dict) else {"unreadable": True}


def _describe(info: dict[str, Any]) -> str:
    if not info or info.get("unreadable"):
        return "holder unknown"
    return (f"pid {info.get('pid', '?')} on {info.get('host', '?')}, started {info.get('started', '?')}: "
            f"{info.get('command', '?')}")
