"""Per-example language-modelling loss over supervised tokens only.

The reference CoLM code averaged the token NLL over padded positions too, which makes the loss of
a short example depend on how much padding its batch happened to need. Here an example's loss is
the mean next-token NLL over the positions whose label is not -100 (padding carries -100).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from colm.columns import IGNORE_INDEX


def supervised_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where the next-token loss is computed, Hugging Face style.

    Logits at position t predict ``labels[:, t + 1]``; a position counts when that label is not -100.

    Args:
        labels: ``[n, T]`` token ids with -100 on unsupervised positions (prompt, padding).

    Returns:
        ``mask [n, T-1]`` over the logits positions ``0..T-2`` and ``targets [N]``, the supervised
        next tokens in row-major order of ``mask`` (N = number of True entries).
    """
    shifted = labels[:, 1:]  # [n, T-1]
    mask = shifted != IGNORE_INDEX  # [n, T-1]
    return mask, shifted[mask]


class _TokenNLL(torch.autograd.Function):
    """Per-token NLL ``[N]`` of ``logits [N, V]`` with a one-pass backward.

    ``F.cross_entropy(reduction="none")``'s backward zero-fills an ``[N, V]`` gradient, scatters
    into it, then runs log-softmax's backward over it: three sweeps over the largest tensor of a
    replay. The gradient is ``(softmax - onehot) * grad``, computed here from the saved
    log-probabilities in one sweep plus an N-element scatter.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(logits.float(), dim=-1)  # [N, V]
        ctx.save_for_backward(logp, targets)
        ctx.dtype = logits.dtype
        return -logp.gather(1, targets.unsqueeze(1)).squeeze(1)  # [N]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logp, targets = ctx.saved_tensors
        out = torch.exp(logp)  # [N, V] softmax (not in place: the graph may be retained)
        rows = torch.arange(targets.numel(), device=out.device)
        out[rows, targets] -= 1.0
        out.mul_(grad.float().unsqueeze(1))
        return out.to(ctx.dtype), None


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Next-token NLL ``[N]`` (float32) of each row of ``logits [N, V]`` (any float dtype) for
    ``targets [N]`` (all supervised); equal to ``F.cross_entropy(logits.float(), targets,
    reduction="none")``, with a cheaper backward when ``logits`` requires grad."""
    if logits.requires_grad and torch.is_grad_enabled():
        return _TokenNLL.apply(logits, targets)
    return F.cross_entropy(logits.float(), targets, reduction="none")


def sum_per_row(token_nll: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum ``token_nll [N]`` (row-major over ``mask [n, T-1]``) into one value per row ``[n]``
    (float32; differentiable)."""
    rows = mask.nonzero(as_tuple=True)[0]  # [N]
    total = torch.zeros(mask.shape[0], dtype=torch.float32, device=token_nll.device)
    return total.index_add(0, rows, token_nll.float())  # [n]


def mean_per_row(token_nll: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average ``token_nll [N]`` (row-major over ``mask [n, T-1]``) into one value per row ``[n]``.

    Rows without any supervised token get 0: they carry no training signal, and 0 (rather than NaN)
    keeps downstream similarity computations finite.
    """
    count = mask.sum(dim=1).clamp(min=1).to(torch.float32)  # [n]
    return sum_per_row(token_nll, mask) / count


def per_example_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token NLL ``[n]`` (float32, differentiable) and supervised-token count ``[n]``
    of each example; the shared core of :func:`per_example_loss`, the trainer's weighted loss and
    per-source evaluation.

    ``logits[:, :-1]`` predicts ``labels[:, 1:]`` (the shift Hugging Face applies); positions
    whose label is -100 (prompt tokens, padding) are excluded. Only the supervised rows of the
    logits are gathered and upcast, never a float32 copy of the whole ``[n, T, V]`` tensor.
    """
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(
            f"per_example_loss expects logits [n, T, V] and labels [n, T]; got "
            f"{tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    mask, targets = supervised_positions(labels)  # [n, T-1], [N]
    nll = token_nll(logits[:, :-1][mask], targets)  # [N]
    return sum_per_row(nll, mask), mask.sum(dim=1)


def per_example_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token negative log-likelihood of each example over its supervised tokens.

    Positions whose label is -100 (prompt tokens, padding) are excluded; rows with no supervised
    token return 0. Computed in float32 whatever the logits' dtype (see :func:`per_example_nll`).

    Args:
        logits: ``[n, T, V]``.
        labels: ``[n, T]`` with -100 where no loss is taken.

    Returns:
        ``[n]`` float32 losses.
    """
    sums, counts = per_example_nll(logits, labels)  # [n], [n]
    return sums / counts.clamp(min=1).to(torch.float32)
