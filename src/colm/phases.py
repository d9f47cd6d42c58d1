"""Progress bars for colm's long phases, off unless a front end turns them on.

GGUF conversion, tokenization, the pseudo-source embedding pass, evaluation and generation can
each take from seconds to minutes. The library stays quiet by default, so a Python caller's
output is its own. The `colm` command turns the bars on (`enable(True)`) unless `--disable-tqdm`
is given. Even then a bar is drawn only on a terminal (tqdm's `disable=None`), so logs and CI
output get no carriage-return noise. Only rank 0 of a distributed run draws: the ranks work in
lockstep, and N bars would garble the terminal.

The library's loops call :func:`track` (wraps an iterable) or :func:`phase` (a bar advanced by
hand), and both cost nothing when disabled.
"""
from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_enabled = False


def enable(on: bool = True) -> None:
    """Turn the phase bars on (the CLI does, unless --disable-tqdm) or off."""
    global _enabled
    _enabled = bool(on)


def enabled() -> bool:
    return _enabled and os.environ.get("RANK", "0") in ("", "0")


def _bar(total: int | None, desc: str, unit: str):
    from tqdm.auto import tqdm

    # disable=None: tqdm itself turns the bar off when stderr is not a terminal
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=None, leave=False,
                dynamic_ncols=True)


def track(iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "batch") -> Iterator[T]:
    """``iterable``, with a bar while it is consumed when bars are on."""
    if not enabled():
        yield from iterable
        return
    if total is None:
        total = len(iterable) if hasattr(iterable, "__len__") else None  # type: ignore[arg-type]
    bar = _bar(total, desc, unit)
    try:
        for item in iterable:
            yield item
            bar.update(1)
    finally:
        bar.close()


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_description_str(self, desc: str) -> None:
        pass


@contextlib.contextmanager
def phase(desc: str, total: int | None = None, unit: str = "step") -> Iterator[object]:
    """A bar advanced by hand (``bar.update(n)``, ``bar.set_description_str(...)``); a
    do-nothing object when bars are off."""
    if not enabled():
        yield _NoBar()
        return
    bar = _bar(total, desc, unit)
    try:
        yield bar
    finally:
        bar.close()
