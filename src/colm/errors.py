"""Errors shared across colm's layers."""
from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from; the message names the folder or file and why."""
