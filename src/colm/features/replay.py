"""Capture the last decoder layer's inputs once, then replay last layer + tail many times.

How the replay stays architecture-generic
-----------------------------------------
What runs *after* the last decoder layer differs between models (final norm called ``norm``,
``ln_f``, ``final_layer_norm`` or ``final_layernorm``; a reshape on GPT-2; logit scaling or soft-
capping on some families). Rather than rebuilding that tail by hand, a replay runs the model's
**own forward** with two temporary changes:

1. the decoder ``nn.ModuleList`` is swapped for a one-element list holding only the last layer,
   so layers ``0..L-2`` are skipped;
2. a forward pre-hook on the last layer replaces whatever the model passes it by the arguments
   captured once in :meth:`LastLayerReplay.capture` (hidden states, attention mask, rotary
   position embeddings, ... exactly as the model passed them).

The model then executes its real tail (final norm, LM head, any functional post-processing).
The wasted work per replay is the embedding lookup, mask and rotary construction: small next to
one decoder layer plus the LM head. Substituted parameters go through
``torch.func.functional_call``, so real parameters are never written.

Capture stops the forward with an exception as soon as the last layer's inputs are recorded, so
the last layer and the LM head do not run twice.

Half-precision models: a replay of a bf16/fp16 model runs the last layer and the tail in
float32 (float32 copies of their parameters, made once per replay object, and the captured
activations upcast). Zeroth-order features take differences of losses at ``theta +- eps z``;
in bf16 the perturbed weight is rounded back to 8 bits of mantissa (at |w| ~ 0.2 and
eps = 1e-3 the applied step is off by tens of percent) and the loss difference is of the order
of bf16's own rounding, so coefficients came out wrong, even with the wrong sign. The layers
before the last one still run in the model's dtype: their output is the data being scored.

KV cache: every forward passes ``use_cache=False`` and the captured kwargs are checked to hold no
``Cache``. A ``DynamicCache`` handed to the layer would grow on each replay and make the attention
read stale keys/values, silently ignoring perturbations of the value projection.

Loss replays only push the *supervised* positions through the LM head (a pre-hook on it gathers
them), which both saves compute and avoids materializing the full ``[n, T, V]`` logits. For the
same reason the last layer's MLP (its ``mlp`` child, position-wise in every causal LM family
supported) runs on those positions only: a pre-hook gathers its input to ``[1, N, h]`` and a
forward hook scatters the output back into a zero ``[n, T, h]``. The other positions' outputs of
the last layer are then wrong, but nothing reads them: the head sees only supervised positions and
the last layer is last. Attention still runs on every position (the supervised ones attend to
them). On the 1M-parameter benchmark Llama (half the tokens supervised) this took a replay from
0.30 to 0.24 of a full forward. Replays with overrides inside the MLP keep it whole, so that hooks on
those modules (the exact features') see per-example ``[n, T, .]`` activations.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from .loss import mean_per_row, supervised_positions, token_nll
from .sharded import GatheredTail, is_sharded, tail_fsdp_modules
from .structure import (
    DecoderStack,
    StopForward,
    find_decoder_stack,
    model_device,
    model_inputs,
    output_embeddings,
)

# Names of the position-wise feed-forward child of a decoder layer (Llama, Qwen2, Mistral, Phi,
# GPT-2 and GPT-NeoX all use "mlp").
_MLP_NAMES = ("mlp", "feed_forward", "ffn")


def position_wise_mlp(layer: nn.Module) -> tuple[str, nn.Module] | None:
    """The decoder layer's feed-forward child ``(attribute name, module)``, or None."""
    for name in _MLP_NAMES:
        child = getattr(layer, name, None)
        if isinstance(child, nn.Module):
            return name, child
    return None


def _contains_cache(value: Any) -> bool:
    try:
        from transformers.cache_utils import Cache
    except ImportError:  # pragma: no cover - transformers is a dependency
        return False
    if isinstance(value, Cache):
        return True
    if isinstance(value, (tuple, list)):
        return any(_contains_cache(v) for v in value)
    if isinstance(value, dict):
        return any(_contains_cache(v) for v in value.values())
    return False


def _detach(value: Any, float32: bool = False) -> Any:
    """Detached copy of a nest of tensors; ``float32`` also upcasts half-precision tensors."""
    if isinstance(value, torch.Tensor):
        value = value.detach()
        if float32 and value.dtype in HALF_DTYPES:
            value = value.float()
        return value
    if isinstance(value, tuple):
        return tuple(_detach(v, float32) for v in value)
    if isinstance(value, list):
        return [_detach(v, float32) for v in value]
    if isinstance(value, dict):
        return {k: _detach(v, float32) for k, v in value.items()}
    return value


HALF_DTYPES = (torch.float16, torch.bfloat16)


class LastLayerReplay:
    """Replay the last decoder layer + final norm + LM head of a causal LM on captured inputs.

    Usage::

        replay = LastLayerReplay(model)
        replay.capture(batch)                 # one no-grad forward, stops after layer L-1
        base = replay.losses()                # [n] per-example losses
        pert = replay.losses({name: tensor})  # same, with parameters substituted

    ``batch`` holds ``input_ids``, ``attention_mask`` (right or left padding) and ``labels``
    (-100 where no loss is taken); other keys are ignored. Override names are the model's own
    parameter names (``model.named_parameters()``) and must belong to the last decoder layer or to
    the modules after it. Replays run in whatever grad mode the caller is in (the exact features
    backpropagate through them); the caller chooses eval/train mode.

    ``float32``: replay the last layer and the tail in float32 (see the module docstring). None
    (default) does so exactly when one of their parameters is bf16 or fp16. Overrides are then
    expected in float32 (``compute_dtype``).
    """

    def __init__(self, model: nn.Module, float32: bool | None = None) -> None:
        self.model = model
        self.stack: DecoderStack = find_decoder_stack(model)
        self.head: nn.Module = output_embeddings(model)
        self._replayed = {
            name: p for name, p in model.named_parameters()
            if name.startswith(self.stack.last_prefix) or not name.startswith(f"{self.stack.path}.")
        }
        if float32 is None:
            float32 = any(p.dtype in HALF_DTYPES for p in self._replayed.values())
        self.float32 = bool(float32)
        self._fp32_params: dict[str, torch.Tensor] | None = None
        found = position_wise_mlp(self.stack.last)
        self._mlp: nn.Module | None = None if found is None else found[1]
        self._mlp_prefix = "" if found is None else f"{self.stack.last_prefix}{found[0]}."
        self._args: tuple | None = None
        self._kwargs: dict | None = None
        self._inputs: dict[str, torch.Tensor] | None = None
        self._labels: torch.Tensor | None = None
        # FSDP2: the last block and the tail, gathered for the replays (see colm/features/sharded.py)
        self._tail = GatheredTail(
            tail_fsdp_modules(model, self.stack.path, self.stack.last_prefix) if is_sharded(model) else ()
        )

    # --- capture -------------------------------------------------------------------------------
    @property
    def captured(self) -> bool:
        return self._args is not None

    def compute_dtype(self, param: torch.Tensor) -> torch.dtype:
        """The dtype a replay computes ``param`` in (float32 for half parameters when
        ``self.float32``), i.e. the dtype overrides of it should have."""
        return torch.float32 if self.float32 and param.dtype in HALF_DTYPES else param.dtype

    @property
    def batch_size(self) -> int:
        self._require_capture()
        return self._inputs["input_ids"].shape[0]

    def capture(self, batch: Mapping[str, torch.Tensor]) -> None:
        """Run the model once (no grad, ``use_cache=False``) up to the last decoder layer and keep
        that layer's positional and keyword inputs. The last layer and the tail do not run."""
        device = model_device(self.model)
        inputs = model_inputs(batch, device)
        labels = batch.get("labels") if hasattr(batch, "get") else None
        store: dict[str, Any] = {}

        def grab(module: nn.Module, args: tuple, kwargs: dict) -> None:
            store["args"], store["kwargs"] = _detach(args, self.float32), _detach(kwargs, self.float32)
            if not self._tail.active:
                raise StopForward

        if self._tail.active:
            self._capture_sharded(inputs, grab)
        else:
            handle = self.stack.last.register_forward_pre_hook(grab, with_kwargs=True)
            try:
                with torch.no_grad():
                    self.model(**inputs, use_cache=False)
            except StopForward:
                pass
            finally:
                handle.remove()
        if "args" not in store:
            raise RuntimeError("the last decoder layer was never called during the forward")
        if _contains_cache(store["args"]) or _contains_cache(store["kwargs"]):
            raise RuntimeError(
                "the last decoder layer received a KV cache despite use_cache=False; replays "
                "would read stale keys/values"
            )
        self._args, self._kwargs = store["args"], store["kwargs"]
        self._inputs = inputs
        self._labels = labels.to(device) if labels is not None else None

    def _capture_sharded(self, inputs: dict[str, torch.Tensor], grab) -> None:
        """The FSDP2 capture: a complete forward (see colm/features/sharded.py), the grab hook
        before FSDP's on the last layer, the LM head on one position per row only."""
        self._tail.prepare()

        def first_position(module: nn.Module, args: tuple) -> tuple:
            return (args[0][:, :1],) + tuple(args[1:])  # [n, 1, h]: the logits are not used

        handles = [
            # prepend: the inputs exactly as the model passes them, before FSDP's own pre-hook
            self.stack.last.register_forward_pre_hook(grab, with_kwargs=True, prepend=True),
            self.head.register_forward_pre_hook(first_position),
        ]
        try:
            with torch.no_grad():
                self.model(**inputs, use_cache=False)
        finally:
            for handle in handles:
                handle.remove()

    def release(self) -> None:
        """Drop the captured activations (and the float32 parameter copies); on an FSDP2 model,
        reshard the last block."""
        self._args = self._kwargs = self._inputs = self._labels = None
        self._fp32_params = None
        self._tail.release()

    def current(self, params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The tensors the replay computes with for the parameter names of ``params``: the
        parameters themselves, except on an FSDP2 model, where they are the full (gathered)
        tensors of the last block rather than this rank's shards."""
        if not self._tail.active:
            return dict(params)
        self._tail.gather()
        return {name: self.model.get_parameter(name) for name in params}

    def _require_capture(self) -> None:
        if not self.captured:
            raise RuntimeError("call LastLayerReplay.capture(batch) before replaying")

    # --- replays -------------------------------------------------------------------------------
    def losses(self, overrides: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Per-example mean NLL over supervised tokens, replayed with ``overrides`` substituted.

        Returns ``[n]`` float32 (rows without supervised tokens give 0).
        """
        self._require_capture()
        if self._labels is None:
            raise ValueError("the captured batch has no `labels`; losses need them")
        mask, targets = supervised_positions(self._labels)  # [n, T-1], [N]
        n, T = self._labels.shape

        def gather(module: nn.Module, args: tuple) -> tuple | None:
            hidden = args[0]
            if hidden.dim() != 3 or hidden.shape[:2] != (n, T):
                raise RuntimeError(
                    f"LM head input has shape {tuple(hidden.shape)}, expected [{n}, {T}, h]"
                )
            # Only positions whose next token is supervised need logits.
            return (hidden[:, :-1][mask].unsqueeze(0),) + tuple(args[1:])  # [1, N, h]

        trim_mlp = self._mlp is not None and not any(
            name.startswith(self._mlp_prefix) for name in (overrides or {})
        )
        with self._hooked(self.head, gather), self._mlp_at(mask if trim_mlp else None):
            logits = self._forward(overrides).logits  # [1, N, V]
        nll = token_nll(logits.reshape(-1, logits.shape[-1]), targets)  # [N]
        return mean_per_row(nll, mask)

    def logits(self, overrides: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Full replayed logits ``[n, T, V]`` (memory-heavy; for checks and debugging)."""
        self._require_capture()
        return self._forward(overrides).logits

    def hidden_states(self, overrides: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Replayed final hidden states ``[n, T, h]``: the LM head's input, after the final norm.
        The LM head itself is skipped."""
        self._require_capture()
        store: dict[str, torch.Tensor] = {}

        def grab(module: nn.Module, args: tuple) -> None:
            store["hidden"] = args[0]
            raise StopForward

        try:
            with self._hooked(self.head, grab):
                self._forward(overrides)
        except StopForward:
            pass
        return store["hidden"]

    # --- machinery -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _hooked(self, module: nn.Module, hook) -> Iterator[None]:
        handle = module.register_forward_pre_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    @contextlib.contextmanager
    def _mlp_at(self, mask: torch.Tensor | None) -> Iterator[None]:
        """Run the last layer's MLP only at the positions ``mask [n, T-1]`` (None: everywhere)."""
        if mask is None or self._mlp is None:
            yield
            return
        n, T = mask.shape[0], mask.shape[1] + 1
        gathered: list[bool] = []

        def before(module: nn.Module, args: tuple) -> tuple | None:
            x = args[0]
            if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[:2] != (n, T):
                gathered.append(False)  # an unexpected layout: leave this call alone
                return None
            gathered.append(True)
            return (x[:, :-1][mask].unsqueeze(0),) + tuple(args[1:])  # [1, N, h]

        def scatter(y: torch.Tensor) -> torch.Tensor:
            full = y.new_zeros(n, T, y.shape[-1])  # [n, T, h]
            full[:, :-1][mask] = y[0]
            return full

        def after(module: nn.Module, args: tuple, output: Any) -> Any:
            if not gathered.pop():
                return None
            if isinstance(output, torch.Tensor):
                return scatter(output)
            if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
                return (scatter(output[0]),) + output[1:]
            raise RuntimeError(
                f"the last layer's MLP returned {type(output).__name__}; expected a tensor"
            )

        handles = [
            self._mlp.register_forward_pre_hook(before),
            self._mlp.register_forward_hook(after),
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    @contextlib.contextmanager
    def _only_last_layer(self) -> Iterator[None]:
        """Swap the decoder list for ``[last]`` and feed the last layer its captured inputs."""
        stack = self.stack
        args, kwargs = self._args, self._kwargs

        def substitute(module: nn.Module, _args: tuple, _kwargs: dict) -> tuple[tuple, dict]:
            return args, dict(kwargs)

        handle = stack.last.register_forward_pre_hook(substitute, with_kwargs=True)
        original = getattr(stack.parent, stack.attr)
        setattr(stack.parent, stack.attr, nn.ModuleList([stack.last]))
        try:
            yield
        finally:
            setattr(stack.parent, stack.attr, original)
            handle.remove()

    def translate(self, overrides: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Rename overrides to the names they have while the list holds only the last layer."""
        prefix = self.stack.last_prefix
        swapped = f"{self.stack.path}.0." if self.stack.path else "0."
        layers = f"{self.stack.path}."
        out: dict[str, torch.Tensor] = {}
        for name, value in overrides.items():
            if name.startswith(prefix):
                out[swapped + name[len(prefix):]] = value
            elif name.startswith(layers):
                raise ValueError(
                    f"cannot replay {name!r}: only parameters of the last decoder layer "
                    f"({prefix}*) and of the modules after it can be substituted"
                )
            else:
                out[name] = value
        return out

    def _forward(self, overrides: Mapping[str, torch.Tensor] | None):
        if self.float32:
            if self._fp32_params is None:  # once per replay object: the weights do not change
                self._fp32_params = {
                    name: p.detach().float()
                    for name, p in self.current(self._replayed).items() if p.dtype in HALF_DTYPES
                }
            overrides = {**self._fp32_params, **(overrides or {})}
        params = self.translate(overrides or {})
        with self._tail.suspended(), self._only_last_layer():
            return functional_call(
                self.model, params, args=(), kwargs={**self._inputs, "use_cache": False},
                strict=False,
            )
