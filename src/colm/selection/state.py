"""The selector's state in a checkpoint: safetensors tensors plus JSON, never pickle.

A checkpoint folder can come from anywhere (a shared drive, a download), so reading it must not
run code. The Adam history ``m``, ``v`` (``[d]`` float32 each) is stored as safetensors tensors
and everything else (the CoresetConfig, the step counters, betas, eps) as JSON in the file's
metadata. Files written by older colm versions (``colm_selector.pt``, a pickled dict of tensors
and numbers) are still read, through ``torch.load(weights_only=True)``, which refuses anything
but tensors and plain containers.
"""
from __future__ import annotations

import os
from typing import Any

import torch

from colm.config import current_field_names
from colm.errors import CheckpointError
from colm.tagged_files import load_tagged, save_tagged

FORMAT = "colm-selector"
FORMAT_VERSION = 1


def save_selector_state(path: str | os.PathLike[str], config: dict[str, Any], state: dict[str, Any]) -> None:
    """Write ``CoresetSelector.state_dict()`` and the config dict to ``path`` atomically."""
    normalizer = dict(state["normalizer"])
    tensors = {}
    for key in ("m", "v"):
        value = normalizer.pop(key)
        if value is not None:
            tensors[key] = value.detach().to("cpu", torch.float32).contiguous()
    meta = {
        "config": config,
        "selector": {**{k: v for k, v in state.items() if k != "normalizer"}, "normalizer": normalizer},
    }
    save_tagged(path, tensors, meta, FORMAT, FORMAT_VERSION)


def load_selector_state(path: str | os.PathLike[str]) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """``(config dict, CoresetSelector state dict)`` from ``path`` (this format or the legacy
    pickle one); the config dict uses today's field names (``config.current_field_names``).
    Raises CheckpointError (a ValueError) naming the file when it is torn, foreign or unreadable."""
    path = os.fspath(path)
    if path.endswith(".pt"):
        return _load_legacy(path)
    meta, tensors = load_tagged(path, FORMAT, FORMAT_VERSION, "selector state")
    selector = meta.get("selector")
    if not isinstance(selector, dict) or not isinstance(selector.get("normalizer"), dict):
        raise CheckpointError(f"{path}: selector state without a normalizer entry")
    normalizer = dict(selector["normalizer"])
    normalizer["m"], normalizer["v"] = tensors.get("m"), tensors.get("v")
    return current_field_names(meta.get("config")), {**selector, "normalizer": normalizer}


def _load_legacy(path: str) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    import pickle

    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(
            f"{path}: an old-format selector state that cannot be read safely ({' '.join(str(err).split())[:200]}); "
            "resume from a checkpoint written by this colm version, or start a new run"
        ) from None
    if not isinstance(saved, dict) or not isinstance(saved.get("selector"), dict):
        raise CheckpointError(f"{path}: not a colm selector state")
    return current_field_names(saved.get("config")), saved["selector"]
