"""Checkpoint files of tensors plus JSON: safetensors with a tagged metadata entry, no pickle.

A checkpoint folder can come from anywhere, so reading one must never run code. colm's own
state files (the selector's Adam history, the pseudo-source clusters) are safetensors files
whose metadata holds one JSON document tagged with the file's format name and version; a file
of another format, another version or a torn one is refused with a CheckpointError naming it.
"""
from __future__ import annotations

import json
import os
from typing import Any

from torch import Tensor

from colm.errors import CheckpointError

_METADATA_KEY = "colm"


def save_tagged(path: str | os.PathLike, tensors: dict[str, Tensor], meta: dict[str, Any],
                fmt: str, version: int) -> None:
    """Write ``tensors`` (CPU, contiguous) and ``meta`` (JSON-able) to ``path`` atomically."""
    from safetensors.torch import save_file

    tmp = f"{os.fspath(path)}.tmp"
    document = {"format": fmt, "format_version": version, **meta}
    save_file(tensors, tmp, metadata={_METADATA_KEY: json.dumps(document)})
    os.replace(tmp, path)


def load_tagged(path: str | os.PathLike, fmt: str, version: int, what: str) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """``(meta, tensors)`` of a file written by ``save_tagged(..., fmt, version)``; ``what``
    names the kind of file in errors (e.g. "selector state")."""
    from safetensors import SafetensorError, safe_open

    path = os.fspath(path)
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            raw = (f.metadata() or {}).get(_METADATA_KEY)
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path}: not a readable {what} ({err}); the checkpoint is damaged") from None
    try:
        meta = json.loads(raw) if raw is not None else None
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: malformed {what} metadata ({err.msg})") from None
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        raise CheckpointError(f"{path}: not a colm {what} (no '{fmt}' metadata)")
    if meta.get("format_version") != version:
        raise CheckpointError(
            f"{path}: {what} format {meta.get('format_version')!r} is not supported by this colm "
            f"(it reads {version}); use the colm version that wrote it"
        )
    return meta, tensors
