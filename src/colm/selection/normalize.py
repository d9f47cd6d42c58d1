"""Adam-history normalization of per-example gradient features (docs/method.md, step 4).

Training uses Adam, so examples are matched on the Adam *update* each would cause rather than
on the raw gradient. With history ``(m, v)`` over the ``d`` target coordinates and ``t`` updates
folded in so far, example ``i`` with gradient ``g_i`` gets

    m_i = b1 m + (1 - b1) g_i,        v_i = b2 v + (1 - b2) g_i^2,
    feature_i = (m_i / (1 - b1^(t+1))) / (sqrt(v_i / (1 - b2^(t+1))) + eps),

i.e. the bias correction of the step about to be taken (step ``t + 1``, as in Adam). After
selection the history becomes the mean of ``m_i, v_i`` over the selected large-source examples,
and ``t`` grows by one. Since ``m_i, v_i`` are affine in ``g_i, g_i^2``, that mean needs only
the mean of ``g`` and ``g^2`` over the selected rows (``update_from_moments``), never the
``[n, d]`` moment matrices.

The first step is the exception. With an empty history (``t = 0``) the formula gives
``g_i / (|g_i| + eps)``, the sign vector of each example: every example then looks alike up to
signs, and with rank-1 (zo, m = 1) features every example of one sign is identical, so a
selection decided by ties picks the first rows of the pool. Instead, with ``t = 0`` the second
moment comes from the pool itself: ``v_ref = mean_i g_i^2`` over the rows being compared
(``set_pool_moment``), and ``feature_i = g_i / (sqrt(v_ref) + eps)``. That is the scale Adam's
own ``v`` takes once it has seen such gradients, it keeps the differences between examples, and
it does not depend on row order. The history update after the first selection is unchanged.

``second_moment="pool"`` uses that shared reference at every step: ``v_hat = (b2 v + (1 - b2)
mean_i g_i^2) / (1 - b2^(t+1))`` for all examples, so the features are an affine function of
``g_i`` (one diagonal preconditioner) and the mean of the features of a set is the feature of
its mean gradient.

How the selector uses it (the mechanism): the ``[n, d]`` normalized features never exist. The
passes over the raw features in ``colm.selection.passes`` (per-source sums of normalized rows
for step 5's ranking; sums of ``g`` and ``g^2`` over the selected rows for the history) apply
``AdamNormalizer.formula`` block by block, or the same arithmetic in a fused numba loop on CPU;
``transform`` normalizes only the ``[n_q, topk_dims]`` blocks the methods compare. The history
is stored in float32 on the device of the last features seen.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from colm.errors import check_int
from colm.selection.passes import all_finite

if TYPE_CHECKING:
    from colm.config import CoresetConfig

SECOND_MOMENTS = ("per_example", "pool")

class AdamNormalizer:
    """Stateful Adam-history normalizer.

    Args:
        betas: ``(b1, b2)`` of the optimizer.
        eps: the optimizer's epsilon.
        second_moment: ``"per_example"`` or ``"pool"`` (``CoresetConfig.adam_second_moment``).

    The dimension ``d`` is fixed by the first call; a later call with another ``d`` raises
    ``ValueError``.
    """

    def __init__(
        self, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, second_moment: str = "per_example"
    ) -> None:
        b1, b2 = (float(b) for b in betas)
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps!r}")
        if second_moment not in SECOND_MOMENTS:
            raise ValueError(f"second_moment must be one of {SECOND_MOMENTS}, got {second_moment!r}")
        self.betas = (b1, b2)
        self.eps = float(eps)
        self.second_moment = second_moment
        self.m: Tensor | None = None  # [d] float32
        self.v: Tensor | None = None  # [d] float32
        self.step = 0  # t: number of updates folded into (m, v)
        # [d] the pool's mean g^2 of this step: stands in for v while the history is empty
        # (t = 0), and is folded into the shared v_hat with second_moment="pool"
        self._pool_v: Tensor | None = None

    @classmethod
    def from_config(cls, config: CoresetConfig) -> AdamNormalizer:
        """Build from a ``CoresetConfig`` (its ``adam_betas``, ``adam_eps``, ``adam_second_moment``)."""
        b1, b2 = config.adam_betas
        return cls((b1, b2), config.adam_eps, config.adam_second_moment)

    @property
    def needs_pool_moment(self) -> bool:
        """Whether the next normalization uses the pool's mean g^2 (``set_pool_moment``)."""
        return self.step == 0 or self.second_moment == "pool"

    @property
    def dim(self) -> int | None:
        """``d``, or None before the first call."""
        return None if self.m is None else self.m.numel()

    # --- public API ----------------------------------------------------------------------------
    def prepare(self, g: Tensor) -> None:
        """Validate ``g`` ``[n, d]`` and size the history lazily (zeros); move it to ``g``'s
        device. Raises ValueError when ``d`` differs from the history's."""
        if g.dim() != 2:
            raise ValueError(f"gradients must be 2-D [n, d], got shape {tuple(g.shape)}")
        d = g.shape[1]
        if self.m is None or self.v is None:
            self.m = torch.zeros(d, dtype=torch.float32, device=g.device)
            self.v = torch.zeros(d, dtype=torch.float32, device=g.device)
        elif self.m.numel() != d:
            raise ValueError(
                f"feature dimension changed: the Adam history has d={self.m.numel()}, got d={d}"
            )
        if self.m.device != g.device:
            self.m, self.v = self.m.to(g.device), self.v.to(g.device)

    def set_pool_moment(self, mean_g2: Tensor) -> None:
        """The pool's mean ``g^2`` ``[d]`` over the rows compared at this step: the second
        moment of the first step (empty history), and with ``second_moment="pool"`` part of the
        shared ``v_hat`` of every step. Cleared by the next update."""
        if self.m is None or mean_g2.shape != self.m.shape:
            raise ValueError("set_pool_moment needs a [d] tensor after the dimension is known")
        if not all_finite(mean_g2):
            raise ValueError("features are too large: their squares overflow float32")
        self._pool_v = mean_g2.detach().to(self.m)

    def reference(self) -> tuple[Tensor, Tensor, tuple[float, float, float, float]]:
        """``(m, v, (cm, cg, cv, cg2))`` with ``m_hat_i = cm*m + cg*g`` and
        ``v_hat_i = cv*v + cg2*g^2``: Adam's bias-corrected per-example moments; on the first
        step ``g`` over the pool's second moment; with ``second_moment="pool"`` the shared
        ``v_hat`` (then ``cg2 = 0``)."""
        assert self.m is not None and self.v is not None
        b1, b2 = self.betas
        t = self.step + 1
        c1, c2 = 1.0 - b1**t, 1.0 - b2**t
        cm, cg, cv, cg2 = b1 / c1, (1.0 - b1) / c1, b2 / c2, (1.0 - b2) / c2
        if self._pool_v is not None and self.step == 0:
            return self.m, self._pool_v, (0.0, 1.0, 1.0, 0.0)
        if self._pool_v is not None and self.second_moment == "pool":
            return self.m, self.v * cv + self._pool_v * cg2, (cm, cg, 1.0, 0.0)
        return self.m, self.v, (cm, cg, cv, cg2)

    def formula(self, g: Tensor, m: Tensor, v: Tensor) -> Tensor:
        """Normalized features of a block ``g`` ``[n, w]`` given the reference ``m, v`` ``[w]``."""
        cm, cg, cv, cg2 = self.reference()[2]
        g = g.float()
        denom = torch.addcmul(v * cv, g, g, value=cg2)  # [n, w] = v_hat_i
        denom.sqrt_().add_(self.eps)
        num = torch.add(m * cm, g, alpha=cg)  # [n, w] = m_hat_i
        return num.div_(denom)

    def transform(self, g: Tensor, columns: Tensor | None = None) -> Tensor:
        """Normalized features of ``g`` ``[n, w]``: all ``d`` coordinates (``columns=None``,
        ``w = d``) or the coordinates ``columns`` (LongTensor ``[w]``) of the full ``d``."""
        if columns is None:
            self.prepare(g)
            m, v, _ = self.reference()
            return self.formula(g, m, v)
        if self.m is None:
            raise ValueError("transform(columns=...) needs the dimension: call prepare first")
        if g.dim() != 2 or g.shape[1] != columns.numel():
            raise ValueError(f"expected g of shape [n, {columns.numel()}], got {tuple(g.shape)}")
        m, v, _ = self.reference()
        columns = columns.to(m.device)
        return self.formula(g, m.index_select(0, columns), v.index_select(0, columns))

    def update_from_moments(self, mean_g: Tensor, mean_g2: Tensor) -> None:
        """Set the history to the mean of the per-example moments ``m_i, v_i`` over the
        selected rows, given the mean of ``g`` and of ``g^2`` ``[d]`` over them, and advance the
        step (the end of docs/method.md step 4)."""
        if self.m is None or self.v is None:
            raise ValueError("update_from_moments before the dimension is known")
        if mean_g.shape != self.m.shape or mean_g2.shape != self.m.shape:
            raise ValueError(f"moments must have shape [{self.m.numel()}]")
        b1, b2 = self.betas
        self._commit(
            torch.add(self.m * b1, mean_g.to(self.m), alpha=1.0 - b1),
            torch.add(self.v * b2, mean_g2.to(self.v), alpha=1.0 - b2),
        )

    def _commit(self, m: Tensor, v: Tensor) -> None:
        """Make ``(m, v)`` the history and advance the step, unless they are not finite: a
        history with inf/NaN would corrupt every later selection (and every checkpoint), so
        the update is refused and the state stays as it was."""
        if not (all_finite(m) and all_finite(v)):
            raise ValueError(
                "features are too large: the Adam history update overflows float32 (state unchanged)"
            )
        self.m, self.v = m, v
        self.step += 1
        self._pool_v = None

    # --- checkpointing -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain dict of tensors and numbers (every setting and the history); round-trips
        through ``load_state_dict`` and through ``torch.save``/``torch.load``."""
        return {
            "m": None if self.m is None else self.m.detach().clone(),
            "v": None if self.v is None else self.v.detach().clone(),
            "step": self.step,
            "betas": list(self.betas),
            "eps": self.eps,
            "second_moment": self.second_moment,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()``'s output (history moves to the features' device on next use).
        The settings saved with it (betas, eps, second_moment) replace this normalizer's: the
        history means nothing under other ones. A state saved before ``second_moment`` was
        stored keeps this normalizer's. ValueError (state unchanged) on a corrupt state."""
        m, v = state.get("m"), state.get("v")
        if (m is None) != (v is None) or (m is not None and v is not None and m.shape != v.shape):
            raise ValueError("normalizer state has inconsistent m and v")
        if m is not None and v is not None:
            if m.dim() != 1 or not m.is_floating_point() or not v.is_floating_point():
                raise ValueError("normalizer state: m and v must be 1-D floating tensors")
            if not (all_finite(m) and all_finite(v)) or bool((v < 0).any()):
                raise ValueError(
                    "normalizer state is corrupt: m and v must be finite and v >= 0 "
                    "(the checkpoint cannot be resumed)"
                )
        step = check_int("step", state.get("step"), 0, owner="normalizer state")
        # Validate the settings by building a normalizer with them (same checks as __init__).
        b1, b2 = state.get("betas", self.betas)
        settings = AdamNormalizer((b1, b2), state.get("eps", self.eps), state.get("second_moment", self.second_moment))
        self._pool_v = None
        self.m = None if m is None else m.detach().clone().float()
        self.v = None if v is None else v.detach().clone().float()
        self.step = step
        self.betas, self.eps, self.second_moment = settings.betas, settings.eps, settings.second_moment
