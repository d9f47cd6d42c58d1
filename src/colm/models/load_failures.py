"""Say what is wrong with a saved model folder that cannot be loaded, in one line.

transformers reports a truncated or garbage `model.safetensors` as a SafetensorError about
headers, a config.json of another model as "You set `ignore_mismatched_sizes` to False ... look
at the above report", and a diverged run's weights load fine and evaluate to a table of NaN.
Each is a problem of the files the user pointed at, named here with the file and what is wrong.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

WEIGHTS = "model.safetensors"


def weights_shapes(folder: Path) -> dict[str, list[int]]:
    """name -> shape of every tensor in the folder's safetensors file(s), from their headers."""
    from safetensors import safe_open

    shapes: dict[str, list[int]] = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 - a safe_open handle, not a dict
                shapes[name] = list(handle.get_slice(name).get_shape())
    return shapes


def first_shape_mismatch(folder: Path) -> str | None:
    """'<tensor> is [a, b] in model.safetensors but [c, d] for config.json', or None."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        saved = weights_shapes(folder)
        with torch.device("meta"):  # shapes only: no memory for the weights
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(folder)))
    except Exception:  # noqa: BLE001 - only a better message is at stake here
        return None
    for name, tensor in model.state_dict().items():
        for candidate in (name, name.removeprefix("model."), f"model.{name}"):
            if candidate in saved and saved[candidate] != list(tensor.shape):
                return f"{candidate} is {saved[candidate]} in the weights but {list(tensor.shape)} for config.json"
    return None


def describe_load_failure(folder: Path, err: BaseException) -> str | None:
    """What is wrong with the folder's files, for an exception from `from_pretrained`; None when
    the failure is not explained by them."""
    name = type(err).__name__
    message = " ".join(str(err).split())
    if name == "SafetensorError" or "deserializing header" in message:
        files = sorted(p.name for p in folder.glob("*.safetensors")) or [WEIGHTS]
        return (f"{folder / files[0]}: not a readable safetensors file ({message}): it is truncated "
                "or damaged; copy it again, or use another checkpoint")
    if isinstance(err, RuntimeError) and ("mismatched" in message or "size mismatch" in message):
        detail = first_shape_mismatch(folder)
        return (f"{folder}: the weights do not fit {folder / 'config.json'}"
                + (f" ({detail})" if detail else "")
                + ": config.json belongs to another model; put back the config.json saved with these weights")
    return None


def first_non_finite(model: Any) -> str | None:
    """The name of the first parameter holding NaN or infinity, or None."""
    import torch

    for name, param in model.named_parameters():
        if not torch.isfinite(param).all():
            return name
    return None
