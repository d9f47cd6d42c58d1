"""Errors shared across colm's layers, and the argument checks that raise them.

The checks exist so that "an integer, not a bool" and "a budget in [lo, hi]" are written once:
``bool`` is an ``int`` subclass in Python, so a plain ``isinstance(x, int)`` lets ``True`` pass
as 1, which is never what a caller meant.
"""

from __future__ import annotations

import operator
from typing import Any


class InputError(ValueError):
    """Input a user can fix (an option, a model, a folder): the message names it and says what
    was expected. The command line prints it as one line and exits with status 2 (there it is
    called `colm.cli.errors.UsageError`)."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from; the message names the folder or file and why."""


class RenamedWarning(FutureWarning):
    """An old name of a setting was used; it still works until the release the message names.
    Its own class so that the CLI, which silences libraries' FutureWarnings, still shows it."""


class ConfigError(ValueError):
    """A setting with a value it cannot take.

    ``field`` names the setting (a ``CoresetConfig`` field, or an argument such as ``budget``);
    ``expected`` says what it must be. The CLI maps ``field`` to its option name, so it never
    parses the message.
    """

    def __init__(self, field: str, expected: str, value: Any = None, owner: str = "CoresetConfig") -> None:
        self.field = field
        self.expected = expected
        self.value = value
        prefix = f"{owner}.{field}" if owner else field
        super().__init__(f"{prefix} = {value!r} is invalid: expected {expected}")


def is_int(value: Any) -> bool:
    """Whether ``value`` is an integer (a Python or numpy/torch integer scalar), not a bool."""
    if isinstance(value, bool):
        return False
    try:
        operator.index(value)
    except TypeError:
        return False
    return True


def check_int(name: str, value: Any, minimum: int | None = None, owner: str = "") -> int:
    """``value`` as an ``int``; ConfigError(name, ...) unless it is an integer >= ``minimum``."""
    if not is_int(value) or (minimum is not None and operator.index(value) < minimum):
        expected = "an integer" if minimum is None else f"an integer >= {minimum}"
        raise ConfigError(name, expected, value, owner)
    return operator.index(value)


def check_optional_int(name: str, value: Any, minimum: int, owner: str = "") -> int | None:
    """None, or ``check_int(name, value, minimum)``."""
    if value is None:
        return None
    if not is_int(value) or operator.index(value) < minimum:
        raise ConfigError(name, f"None or an integer >= {minimum}", value, owner)
    return operator.index(value)


def check_budget(value: Any, low: int, high: int, name: str = "budget", what: str = "") -> int:
    """``value`` as an ``int``; ConfigError unless it is an integer in ``[low, high]``.
    ``what`` says what ``high`` is (e.g. "the pool size") in the message."""
    if not is_int(value) or not low <= operator.index(value) <= high:
        bound = f"{high} ({what})" if what else f"{high}"
        raise ConfigError(name, f"an integer in [{low}, {bound}]", value, owner="")
    return operator.index(value)
