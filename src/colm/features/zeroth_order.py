"""Zeroth-order (SPSA, MeZO-style) per-example gradient features.

For m probe directions z_j ~ N(0, I) over the concatenated target coordinates (d numbers),

    c_ij = (L_i(θ + ε z_j) - L_i(θ - ε z_j)) / (2ε)      ≈ ∇L_i · z_j
    g_i  = Σ_j c_ij z_j / m                               (a random projection of ∇L_i)

Directions are never stored: z_j is regenerated from a CPU ``torch.Generator`` seeded by
``(config.selection_seed, step, j)``. Generating on the CPU and then moving to the device makes the stream
identical on every rank and device type (CUDA generators produce different numbers from CPU ones),
so in distributed training ranks exchange only the small ``c [n, m]`` and rebuild the features
locally with :func:`zo_features_from_coefficients`.

``config.zo_fixed_z=True`` reproduces the reference code (one set of directions for the whole run,
which makes every feature a multiple of the same vector when m = 1): the step is then ignored.

Parameters are never modified: each perturbed tensor is a new tensor substituted through
``torch.func.functional_call``, so the originals stay bit-exact by construction.
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch
from torch import nn

from .pool import replayed, score_pool
from .replay import LastLayerReplay
from .state import scoring_mode
from .structure import model_device
from .targets import find_target_parameters


def direction_seed(seed: int, step: int, probe: int) -> int:
    """A 63-bit generator seed derived from (seed, step, probe); stable across processes."""
    key = f"colm.zo/{int(seed)}/{int(step)}/{int(probe)}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") & (2**63 - 1)


def zo_direction(
    config, step: int, probe: int, numel: int,
    device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Direction z_probe ``[numel]`` of ``step`` (standard normal), generated on the CPU in
    float32 then moved, so every device and rank gets the same numbers."""
    step = 0 if config.zo_fixed_z else step
    gen = torch.Generator(device="cpu").manual_seed(direction_seed(config.effective_seed, step, probe))
    z = torch.randn(numel, generator=gen, dtype=torch.float32)  # [d]
    return z.to(device=device or "cpu", dtype=dtype)


def zo_directions(
    config, step: int, numel: int,
    device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """All ``config.zo_probes`` directions of ``step`` stacked: ``[m, numel]``."""
    return torch.stack(
        [zo_direction(config, step, j, numel, device, dtype) for j in range(config.zo_probes)]
    )


def zo_features_from_coefficients(
    c: torch.Tensor, config, step: int, numel: int,
    device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Features ``[n, numel] = Σ_j c[:, j] z_j / m`` from coefficients ``c [n, m]``.

    Directions are regenerated one at a time (never all m held at once)."""
    n, m = c.shape
    if m != config.zo_probes:
        raise ValueError(f"c has {m} columns but config.zo_probes = {config.zo_probes}")
    device = device if device is not None else c.device
    coeff = c.to(device=device, dtype=torch.float32)  # [n, m]
    out = torch.zeros(n, numel, device=device, dtype=torch.float32)  # [n, d]
    for j in range(m):
        z = zo_direction(config, step, j, numel, device, torch.float32)  # [d]
        out.addr_(coeff[:, j], z)  # out += c_j z_j^T
    out /= m
    return out.to(dtype)


def _perturbed(
    replay: LastLayerReplay, targets: Mapping[str, torch.Tensor], z: torch.Tensor, scale: float
) -> dict[str, torch.Tensor]:
    """New tensors θ + scale·z (split over the targets in order), computed in float32 and kept
    in the dtype the replay computes in (float32 for a half-precision model: rounding θ + εz
    back to bf16 would change the step actually taken)."""
    out: dict[str, torch.Tensor] = {}
    offset = 0
    for name, p in targets.items():
        k = p.numel()
        part = z[offset:offset + k].view(p.shape)
        out[name] = (p.detach().float() + scale * part).to(replay.compute_dtype(p))
        offset += k
    return out


def zo_coefficients(
    replay_or_model: LastLayerReplay | nn.Module,
    batch: Mapping[str, torch.Tensor] | None,
    config,
    step: int = 0,
    targets: Mapping[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """SPSA coefficients ``c [n, m]``, ``c_ij = (L+_ij - L-_ij) / (2 ε)``.

    Args:
        replay_or_model: a :class:`LastLayerReplay` (captured already, or captured here from
            ``batch``) or the model itself (a replay is built and captured from ``batch``).
        batch: ``input_ids``, ``attention_mask``, ``labels``; ``None`` to reuse a capture.
        config: a ``CoresetConfig`` (``zo_eps``, ``zo_probes``, ``zo_fixed_z``, ``seed``,
            ``feature_modules``).
        step: optimizer step; selects fresh directions unless ``config.zo_fixed_z``.
        targets: target parameters (default: ``find_target_parameters(model,
            config.feature_modules)``).

    One capture, then 2 replays (last layer + tail) per probe, without grad. Given a model, it is
    scored in eval mode and restored afterwards; given a replay, the caller picks the mode (as
    :func:`colm.gradient_features` does).
    """
    if not isinstance(replay_or_model, LastLayerReplay):
        with scoring_mode(replay_or_model):
            return zo_coefficients(LastLayerReplay(replay_or_model), batch, config, step, targets)
    replay = replay_or_model
    if batch is not None:
        replay.capture(batch)
    if targets is None:
        targets = find_target_parameters(replay.model, config.feature_modules)
    targets = replay.current(targets)  # full tensors on an FSDP2 model, not this rank's shards
    numel = sum(p.numel() for p in targets.values())
    device = next(iter(targets.values())).device
    eps = float(config.zo_eps)
    columns = []
    with torch.no_grad():
        for j in range(config.zo_probes):
            z = zo_direction(config, step, j, numel, device, torch.float32)  # [d]
            plus = replay.losses(_perturbed(replay, targets, z, eps))  # [n]
            minus = replay.losses(_perturbed(replay, targets, z, -eps))  # [n]
            columns.append((plus - minus) / (2.0 * eps))
    return torch.stack(columns, dim=1)  # [n, m]


def zo_features(model: nn.Module, batches, config, step: int = 0, *, gather: bool = False,
                optimizer=None, placed: torch.Tensor | None = None) -> torch.Tensor:
    """``feature="zo"`` (colm.features.registry): ``[N, d]`` float32 on the model's device. Only
    the coefficients ``[n, m]`` are gathered; every rank rebuilds ``c z`` from seed and step."""
    device = model_device(model)
    targets = find_target_parameters(model, config.feature_modules)
    coefficients = score_pool(
        model, batches, config,
        lambda chunk: replayed(model, chunk, lambda r: zo_coefficients(r, None, config, step, targets=targets)),
        gather=gather, placed=placed, width=config.zo_probes)  # [N, m]
    numel = sum(p.numel() for p in targets.values())
    return zo_features_from_coefficients(coefficients, config, step, numel, device)  # [N, d]
