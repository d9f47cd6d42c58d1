"""The CLI's error types and how the three kinds of failure are told apart.

* A user error (bad flag, YAML, data, model or folder) is a `UsageError` or a `DataError`, raised
  where the input is checked. It prints one line naming the file/line or option, exit status 2.
* An environment failure (an OSError such as a full disk, or running out of memory) prints one
  line, exit status 1.
* Anything else is a bug in colm or a library it calls: one line saying so with the innermost
  place it was raised, exit status 1, and `--debug` shows the whole traceback.

Library code raises ValueError for bad arguments (that is the Python API's contract); the CLI
converts the ones that mean "your input is wrong" into UsageError where it calls them, so an
unexpected ValueError from deep inside still reads as the bug it is.
"""
from __future__ import annotations

import argparse
import traceback

from colm.errors import InputError

USAGE_EXIT = 2
FAILURE_EXIT = 1


#: Bad command-line usage or configuration; the message names the option, file or line. The
#: library layers raise the same type (colm.errors.InputError) for input a user can fix.
UsageError = InputError


class RunFailed(RuntimeError):
    """The run could not do what was asked for a reason that is neither bad input nor a bug
    (training diverged); printed as `failed: ...`, exit status 1."""


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exception types that mean "the input is wrong", not "colm is broken".

    Imported here, not at module import, so `import colm.cli` stays light.
    """
    from colm.data.errors import DataError

    return (UsageError, DataError)


def is_environment_failure(err: BaseException) -> bool:
    """The machine, not colm: file system errors and running out of (GPU) memory."""
    return (isinstance(err, (OSError, MemoryError, RunFailed))
            or type(err).__name__ == "OutOfMemoryError")


def one_line(err: BaseException) -> str:
    """The error's message on a single line (multi-line library messages are joined)."""
    text = str(err) or type(err).__name__
    if isinstance(err, OSError) and err.filename and err.strerror:
        text = f"{err.filename}: {err.strerror.lower()}"  # "<path>: no space left on device"
    elif isinstance(err, OSError) and err.filename and str(err.filename) not in text:
        text = f"{err.filename}: {text}"
    return " ".join(text.split())


def failure_line(prog: str, err: BaseException) -> str:
    """The one line printed for an exception that is not a user error."""
    if is_environment_failure(err):
        return f"{prog}: failed: {one_line(err)} (rerun with --debug for the traceback)"
    where = ""
    frames = traceback.extract_tb(err.__traceback__)
    if frames:
        last = frames[-1]
        where = f" [at {_short_path(last.filename)}:{last.lineno} in {last.name}]"
    return (f"{prog}: internal error (a bug, not your input): {type(err).__name__}: {one_line(err)}"
            f"{where}; rerun with --debug for the traceback")


def _short_path(filename: str) -> str:
    """site-packages/pkg/mod.py or src/colm/mod.py, not the whole absolute path."""
    parts = filename.replace("\\", "/").split("/")
    for anchor in ("site-packages", "src"):
        if anchor in parts:
            return "/".join(parts[parts.index(anchor) + 1:])
    return "/".join(parts[-2:])


class OneLineErrors:
    """Mixin for an argparse parser (plain or HfArgumentParser): errors raise UsageError (one
    line, exit 2) instead of printing usage and calling sys.exit."""

    prog: str

    def error(self, message: str):  # argparse hook
        raise UsageError(f"{message} (see `{self.prog} --help`)")


class OneLineArgumentParser(OneLineErrors, argparse.ArgumentParser):
    """argparse that raises UsageError (one line, exit 2) instead of printing usage and exiting."""
