"""A toy within-source method for tests/test_registry.py: the first b_q rows of the source.
One module + one registry entry is all a new method needs."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from colm.selection.methods.task import Pick, SourceTask


def fill(tasks: Sequence[SourceTask], config: Any) -> list[Pick]:
    return [Pick(torch.arange(t.budget)) for t in tasks]
