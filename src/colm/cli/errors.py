"""The CLI's error type and how user errors are told apart from bugs.

A user error (bad flag, bad YAML, bad data, a model that cannot be loaded) is printed as one line
and exits with status 2; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse

USAGE_EXIT = 2


class UsageError(ValueError):
    """Bad command-line usage or configuration; the message names the option, file or line."""


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exception types that mean "the input is wrong", not "colm is broken".

    yaml is imported here, not at module import, so `import colm.cli` stays light.
    """
    import yaml

    from colm.data.errors import DataError

    return (UsageError, DataError, ValueError, FileNotFoundError, NotADirectoryError,
            IsADirectoryError, PermissionError, yaml.YAMLError)


def one_line(err: BaseException) -> str:
    """The error's message on a single line (multi-line library messages are joined)."""
    text = str(err) or type(err).__name__
    if isinstance(err, (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)) \
            and err.filename and str(err.filename) not in text:
        text = f"{err.filename}: {text}"
    return " ".join(text.split())


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse that raises UsageError (one line, exit 2) instead of printing usage and exiting."""

    def error(self, message: str):  # argparse hook
        raise UsageError(f"{message} (see `{self.prog} --help`)")
