"""The gradient noise scale during training, for any `transformers.Trainer`.

`NoiseScaleCallback` measures B_simple = tr(Sigma) / |G|^2 (colm.diagnostics.noise_scale) every
`every` optimizer steps from two batch sizes the step already has, at no extra forward or
backward pass:

* gradient accumulation >= 2 ("accumulation"): the gradient after the first micro-batch and the
  accumulated one, both read before gradient clipping and, under DDP, before the all-reduce
  (every rank measures its own pair; the estimates are averaged over ranks);
* DDP with no accumulation ("ddp"): each rank's local gradient and the all-reduced one (a step
  whose gradient was clipped is skipped: the reduced norm before clipping is not visible);
* neither ("split", opt-in): the trainer runs the measured step as two half micro-batches; this
  needs `NoiseScaleSplitMixin` among the trainer's bases (CoresetTrainer has it).

Norms are read by hooks the callback registers on the trainable parameters only for the
measured step (`Tensor.register_post_accumulate_grad_hook`, which runs as each gradient has
been accumulated, before DDP reduces it and before the Trainer clips it), and one forward
pre-hook on the model counts each micro-batch's rows and supervised tokens: a micro-batch's
share of the accumulated gradient is its share of the step's supervised tokens when the model
normalizes its loss by the step's token count (`num_items_in_batch`), else an equal share.
Between measured steps nothing is hooked.

The numbers reach every `report_to` backend through `Trainer.log` at the Trainer's logging
steps (`noise_scale/b_simple`, `noise_scale/grad_sq`, `noise_scale/trace`, `noise_scale/batch`,
`noise_scale/measurements`); use `add_noise_scale(trainer)` to attach it. The moving averages
travel with checkpoints (the callback is an `ExportableState`) and are restored on resume.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from colm import distributed
from colm.diagnostics.noise_scale import (
    NoiseScaleEMA,
    effective_batch,
    per_example_estimates,
    regime,
    two_size_estimates,
)

logger = logging.getLogger(__name__)

PREFIX = "noise_scale/"
#: The post-clip gradient norm counts as clipped above this fraction of max_grad_norm.
CLIPPED_FRACTION = 1 - 1e-3


class NoiseScaleCallback(TrainerCallback, ExportableState):
    """Measures the gradient noise scale every `every` optimizer steps (module docstring).

    Args:
        every: measure at optimizer steps 0, every, 2*every, ... (global step before the update).
        beta: the moving averages' decay (0.9: about the last 10 measurements).
        split: with no accumulation and one process, split measured steps into two halves
            (needs `NoiseScaleSplitMixin` in the trainer; without it nothing is measured).
        log: where records go (`trainer.log`, so every `report_to` backend sees them); None keeps
            them in `history` only.
    """

    def __init__(self, every: int = 10, beta: float = 0.9, split: bool = False,
                 log: Callable[[dict[str, float]], None] | None = None) -> None:
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ValueError(f"NoiseScaleCallback: every must be an integer >= 1, got {every!r}")
        self.every = every
        self.split = split
        self.log = log
        self.ema = NoiseScaleEMA(beta=beta)
        #: The second estimate, from per-example gradients of the parameters colm's selection
        #: features cover (CoresetTrainer with feature="exact" only): those parameters' noise scale.
        self.feature_ema = NoiseScaleEMA(beta=beta)
        #: One record per measurement: step, the step's estimates and the averages after it.
        self.history: list[dict[str, float]] = []
        self.mode: str | None = None
        self.skipped_clipped = 0
        self._restored = False
        self._batch = 0
        self._armed = False
        self._handles: list[Any] = []
        self._sq: dict[int, torch.Tensor] = {}
        self._micro: list[tuple[int, torch.Tensor | None, bool]] = []  # rows, supervised tokens, token-normalized
        self._small: tuple[float, int] | None = None  # |a1|^2 and how many micro-batches it holds
        self._model: torch.nn.Module | None = None
        self._forward_handle: Any = None

    # ---- exportable state (checkpoints) ------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"args": {"every": self.every, "beta": self.ema.beta, "split": self.split},
                "attributes": {"noise_scale_state": self.noise_scale_state}}

    @property
    def noise_scale_state(self) -> dict[str, Any]:
        return {"ema": self.ema.state_dict(), "feature_ema": self.feature_ema.state_dict(),
                "history": list(self.history), "skipped_clipped": self.skipped_clipped}

    @noise_scale_state.setter
    def noise_scale_state(self, value: Mapping[str, Any]) -> None:
        self.ema.load_state_dict(value["ema"])
        if "feature_ema" in value:
            self.feature_ema.load_state_dict(value["feature_ema"])
        self.history = [dict(r) for r in value.get("history", [])]
        self.skipped_clipped = int(value.get("skipped_clipped", 0))

    def _restore(self, state: Any) -> None:
        """At the first step of a train() call: the averages of the checkpoint resumed from (the
        Trainer loads trainer_state.json after on_train_begin, so not earlier)."""
        self._restored = True
        saved = (state.stateful_callbacks or {}).get(type(self).__name__)
        if isinstance(saved, list):
            saved = saved[0] if saved else None
        attributes = (saved or {}).get("attributes", {})
        if "noise_scale_state" in attributes and state.global_step > 0:
            self.noise_scale_state = attributes["noise_scale_state"]
            self.history = [r for r in self.history if r["step"] < state.global_step]

    # ---- set-up --------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        world = max(int(getattr(args, "world_size", 1) or 1), distributed.world_size())
        accumulation = int(args.gradient_accumulation_steps)
        self._batch = int(args.per_device_train_batch_size) * accumulation * world
        self._model = model
        self._restored = False
        if model is not None and _sharded(model):
            self.mode = None
            logger.warning("noise scale: the model's parameters are sharded (FSDP2), so a gradient "
                           "norm needs a reduction the callback does not do; nothing is measured")
        elif accumulation >= 2:
            self.mode = "accumulation"
        elif world >= 2:
            self.mode = "ddp"
        elif self.split:
            self.mode = "split"
        else:
            self.mode = None
            logger.warning(
                "noise scale: one process and no gradient accumulation, so a step has one batch "
                "size only; nothing is measured (turn on the split, or use accumulation >= 2)"
            )

    def on_train_end(self, args, state, control, **kwargs):
        self._disarm()

    # ---- one measured step ---------------------------------------------------------------------
    def due(self, step: int) -> bool:
        return self.mode is not None and step % self.every == 0

    def on_step_begin(self, args, state, control, **kwargs):
        if not self._restored:
            self._restore(state)
        if self.due(state.global_step) and self._model is not None:
            self._arm(self._model)

    def _arm(self, model: torch.nn.Module) -> None:
        self._armed = True
        self._sq.clear()
        self._micro.clear()
        self._small = None
        for index, param in enumerate(p for p in model.parameters() if p.requires_grad):
            self._handles.append(param.register_post_accumulate_grad_hook(self._grad_hook(index)))
        self._forward_handle = model.register_forward_pre_hook(self._count_micro_batch, with_kwargs=True)

    def _disarm(self) -> None:
        self._armed = False
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self._forward_handle is not None:
            self._forward_handle.remove()
            self._forward_handle = None

    def _grad_hook(self, index: int) -> Callable[[torch.Tensor], None]:
        def hook(param: torch.Tensor) -> None:
            if param.grad is not None:
                # the gradient accumulated so far, before DDP reduces it and before clipping
                self._sq[index] = param.grad.detach().float().square().sum()
        return hook

    def _count_micro_batch(self, module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        if not (module.training and torch.is_grad_enabled()):
            return  # an evaluation or a scoring pass, not a micro-batch being trained
        tensors = [kwargs["input_ids"]] if torch.is_tensor(kwargs.get("input_ids")) else []
        tensors += [v for v in (*args, *kwargs.values()) if torch.is_tensor(v) and v.dim() > 0]
        rows = int(tensors[0].shape[0]) if tensors else 0
        labels = kwargs.get("labels")
        tokens = (labels[..., 1:] != -100).sum() if torch.is_tensor(labels) and labels.dim() >= 2 else None
        self._micro.append((rows, tokens, kwargs.get("num_items_in_batch") is not None))

    def _grad_sq(self) -> float:
        return float(torch.stack(list(self._sq.values())).sum()) if self._sq else math.nan

    def after_first_micro_batch(self) -> None:
        """The gradient now holds the first micro-batch only (called by the Trainer's loop through
        on_substep_end, or by NoiseScaleSplitMixin between its halves)."""
        if self._armed and self._small is None:
            self._small = (self._grad_sq(), len(self._micro))

    def on_substep_end(self, args, state, control, **kwargs):
        self.after_first_micro_batch()

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if not self._armed:
            return
        try:
            pair = self._two_sizes(args, model)
        finally:
            self._disarm()
        if pair is None:
            return
        estimate = self._average_over_ranks(two_size_estimates(*pair))
        self.ema.update(*estimate)
        self.history.append({
            "step": state.global_step, "b_small": pair[0], "b_big": pair[2],
            "grad_sq_small": pair[1], "grad_sq_big": pair[3],
            "grad_sq_step": estimate[0], "trace_step": estimate[1],
            "grad_sq": self.ema.g2_mean, "trace": self.ema.trace_mean, "b_simple": self.ema.b_simple,
            "batch": self._batch,
        })

    def _shares(self) -> tuple[list[float], list[float]]:
        """Each micro-batch's rows and its share of the accumulated gradient."""
        rows = [float(r) for r, _, _ in self._micro]
        if self._micro and all(t is not None and norm for _, t, norm in self._micro):
            tokens = [float(t) for _, t, _ in self._micro]  # type: ignore[arg-type]
            if sum(tokens) > 0:
                return rows, [t / sum(tokens) for t in tokens]
        return rows, [1.0 / len(rows)] * len(rows)

    def add_feature_estimate(self, step: int, features: torch.Tensor) -> None:
        """The per-example estimate from a pool's exact gradient features ([n, d], rows drawn at
        random): the noise scale of the parameters they cover, logged apart as
        noise_scale/feature_params_*."""
        if step % self.every == 0 and features.shape[0] >= 2:
            self.feature_ema.update(*per_example_estimates(features))

    def _two_sizes(self, args: Any, model: Any) -> tuple[float, float, float, float] | None:
        """(b_small, |G_small|^2, b_big, |G_big|^2) of this step, in one common scale; None when
        the step cannot be measured."""
        rows, shares = self._shares()
        if not rows or min(rows) <= 0:
            return None
        local_sq = self._grad_sq()
        if self.mode in ("accumulation", "split"):
            if self._small is None or self._small[1] != 1 or len(rows) < 2:
                return None  # e.g. the epoch's short last step with one micro-batch
            # after micro-batch 1 the gradient is share_1 * G_1 (in the step's common scale)
            return rows[0], self._small[0] / shares[0] ** 2, effective_batch(shares, rows), local_sq
        # ddp: this rank's local gradient against the all-reduced one, after clipping
        params = [p for p in (model or self._model).parameters() if p.requires_grad and p.grad is not None]
        reduced_sq = float(sum(p.grad.detach().float().square().sum() for p in params))
        clipped = bool(args.max_grad_norm and args.max_grad_norm > 0
                       and math.sqrt(reduced_sq) >= CLIPPED_FRACTION * args.max_grad_norm)
        if distributed.world_size() > 1:
            clipped = any(distributed.gather_objects([clipped]))  # the ranks hold one reduced gradient
        if clipped:
            self.skipped_clipped += 1
            return None
        local_batch = effective_batch(shares, rows)
        return local_batch, local_sq, local_batch * distributed.world_size(), reduced_sq

    def _average_over_ranks(self, estimate: tuple[float, float]) -> tuple[float, float]:
        if distributed.world_size() <= 1:
            return estimate
        every_rank = distributed.gather_objects([estimate])  # measured steps only: a tiny exchange
        return (sum(e[0] for e in every_rank) / len(every_rank), sum(e[1] for e in every_rank) / len(every_rank))

    # ---- reporting -----------------------------------------------------------------------------
    def records(self) -> dict[str, float]:
        """The latest averages as `noise_scale/*` log entries (empty before any measurement)."""
        out: dict[str, float] = {}
        if self.feature_ema.count:
            out |= {"feature_params_b_simple": self.feature_ema.b_simple,
                    "feature_params_grad_sq": self.feature_ema.g2_mean,
                    "feature_params_trace": self.feature_ema.trace_mean}
        if not self.ema.count:
            return {PREFIX + k: v for k, v in out.items() if math.isfinite(v)}
        out |= {"b_simple": self.ema.b_simple, "grad_sq": self.ema.g2_mean, "trace": self.ema.trace_mean,
               "batch": float(self._batch), "measurements": float(self.ema.count)}
        if self.skipped_clipped:
            out["skipped_clipped"] = float(self.skipped_clipped)
        return {PREFIX + k: v for k, v in out.items() if math.isfinite(v)}  # no NaN in JSON logs

    def on_step_end(self, args, state, control, **kwargs):
        # at the Trainer's logging steps, as a record of its own (a callback cannot add keys to
        # the Trainer's loss record before the report_to callbacks have seen it)
        if control.should_log and self.log is not None and (self.ema.count or self.feature_ema.count):
            self.log(self.records())
            control.should_log = True  # on_log cleared it: the Trainer's own record is still due

    def summary(self) -> str | None:
        """Where the run's batch stands relative to the last B_simple, or None."""
        if not self.ema.count or not math.isfinite(self.ema.b_simple):
            return None
        return regime(self.ema.b_simple, self._batch)


def _sharded(model: torch.nn.Module) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without distributed
        return False
    return any(isinstance(p, DTensor) for p in model.parameters())


def add_noise_scale(trainer: Any, every: int = 10, beta: float = 0.9, split: bool = False) -> NoiseScaleCallback:
    """Attach a `NoiseScaleCallback` to `trainer` (any `transformers.Trainer`) that logs through
    `trainer.log`, so TensorBoard, W&B and every other `report_to` backend get `noise_scale/*`."""
    callback = NoiseScaleCallback(every=every, beta=beta, split=split, log=trainer.log)
    trainer.add_callback(callback)
    _keep_through_callback_restore(trainer, callback)
    return callback


def _keep_through_callback_restore(trainer: Any, callback: NoiseScaleCallback) -> None:
    """With `restore_callback_states_from_checkpoint=True` a resuming Trainer swaps every stateful
    callback for a new instance built from its saved args: that one has no log hook (noise_scale/*
    would stop reaching report_to) and is not the object the caller holds. Put the caller's
    instance back; it restores the saved averages itself at its first step (`_restore`)."""
    load = getattr(trainer, "_load_callback_state", None)
    if load is None:  # a Trainer without the hook: nothing swaps the callback
        return

    def load_then_keep_ours() -> None:
        load()
        callbacks = trainer.callback_handler.callbacks
        if callback not in callbacks:
            swapped = [i for i, c in enumerate(callbacks) if type(c) is type(callback)]
            if swapped:
                callbacks[swapped[0]] = callback
            else:
                callbacks.append(callback)

    trainer._load_callback_state = load_then_keep_ours


def split_rows(inputs: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """A collated micro-batch cut into two halves by rows (every tensor whose first dimension is
    the batch's; anything else, e.g. a scalar, goes to both), or None below two rows."""
    first = inputs.get("input_ids")
    if not torch.is_tensor(first):
        first = next((v for v in inputs.values() if torch.is_tensor(v) and v.dim() > 0), None)
    if first is None or first.shape[0] < 2:
        return None
    n = int(first.shape[0])
    cut = n // 2
    halves: tuple[dict[str, Any], dict[str, Any]] = ({}, {})
    for key, value in inputs.items():
        if torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == n:
            halves[0][key], halves[1][key] = value[:cut], value[cut:]
        else:
            halves[0][key] = halves[1][key] = value
    return halves


class NoiseScaleSplitMixin:
    """Lets a `NoiseScaleCallback(split=True)` measure a run with no accumulation and one process:
    its measured steps train as two half micro-batches (the gradient of gradient accumulation 2,
    which the Trainer's loss scaling gives when `current_gradient_accumulation_steps` is 2).
    Put it before the Trainer class among the bases; other steps are untouched."""

    def training_step(self, model: Any, inputs: Any, num_items_in_batch: Any = None) -> torch.Tensor:
        callback = self._split_noise_scale()
        halves = split_rows(inputs) if callback is not None else None
        if callback is None or halves is None:
            return super().training_step(model, inputs, num_items_in_batch)  # type: ignore[misc]
        saved = self.current_gradient_accumulation_steps
        self.current_gradient_accumulation_steps = 2
        try:
            first = super().training_step(model, halves[0], num_items_in_batch)  # type: ignore[misc]
            callback.after_first_micro_batch()
            second = super().training_step(model, halves[1], num_items_in_batch)  # type: ignore[misc]
        finally:
            self.current_gradient_accumulation_steps = saved
        return first + second

    def _split_noise_scale(self) -> NoiseScaleCallback | None:
        handler = getattr(self, "callback_handler", None)
        if getattr(self, "current_gradient_accumulation_steps", 1) != 1 or handler is None:
            return None
        for callback in handler.callbacks:
            if isinstance(callback, NoiseScaleCallback) and callback.mode == "split" and callback._armed:
                return callback
        return None
