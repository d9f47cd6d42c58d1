"""per_example_loss: golden values against a hand-written loop."""
from __future__ import annotations

import math

import pytest
import torch
from tiny_models import one_thread  # noqa: F401  (autouse: one thread)

from colm.features import per_example_loss


def _loop_loss(logits: torch.Tensor, labels: torch.Tensor) -> list[float]:
    out = []
    for i in range(logits.shape[0]):
        total, count = 0.0, 0
        for t in range(logits.shape[1] - 1):
            target = int(labels[i, t + 1])
            if target == -100:
                continue
            row = logits[i, t].double()
            total += float(torch.logsumexp(row, 0) - row[target])
            count += 1
        out.append(total / count if count else 0.0)
    return out


def test_matches_hand_written_loop_with_padding_and_prompt_masking() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 7, 11, generator=gen)
    labels = torch.randint(0, 11, (4, 7), generator=gen)
    labels[0, :3] = -100  # prompt
    labels[1, 5:] = -100  # right padding
    labels[2, :] = -100  # nothing supervised -> 0
    labels[3, 0] = -100  # first label is never predicted anyway
    got = per_example_loss(logits, labels)
    want = _loop_loss(logits, labels)
    assert got.dtype == torch.float32 and got.shape == (4,)
    assert got[2].item() == 0.0
    for g, w in zip(got.tolist(), want):
        assert math.isclose(g, w, rel_tol=1e-6, abs_tol=1e-6)


def test_golden_uniform_logits() -> None:
    # Uniform logits: every supervised token costs log V, whatever the padding.
    logits = torch.zeros(2, 5, 8)
    labels = torch.tensor([[-100, 3, 4, -100, -100], [-100, -100, -100, -100, 7]])
    assert torch.allclose(per_example_loss(logits, labels), torch.full((2,), math.log(8.0)))


def test_padding_does_not_change_an_example_loss() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 6, 9, generator=gen)
    labels = torch.tensor([[-100, 1, 2, 3, 4, 5]])
    padded_logits = torch.cat([logits, torch.randn(1, 4, 9, generator=gen)], dim=1)
    padded_labels = torch.cat([labels, torch.full((1, 4), -100)], dim=1)
    assert torch.allclose(per_example_loss(logits, labels), per_example_loss(padded_logits, padded_labels))


def test_bf16_logits_computed_in_float32() -> None:
    logits = torch.randn(2, 4, 5).bfloat16()
    labels = torch.randint(0, 5, (2, 4))
    got = per_example_loss(logits, labels)
    assert got.dtype == torch.float32
    assert torch.allclose(got, per_example_loss(logits.float(), labels))


def test_shape_errors() -> None:
    with pytest.raises(ValueError):
        per_example_loss(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_token_nll_value_and_gradient_equal_cross_entropy(dtype) -> None:
    from colm.features.loss import token_nll

    gen = torch.Generator().manual_seed(7)
    logits = (3 * torch.randn(13, 11, generator=gen)).to(dtype).requires_grad_(True)
    targets = torch.randint(0, 11, (13,), generator=gen)
    weights = torch.rand(13, generator=gen)
    got = token_nll(logits, targets)
    want = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="none")
    torch.testing.assert_close(got, want)
    # retain_graph: the backward may run twice on one graph (the exact features' fallback)
    (g1,) = torch.autograd.grad((got * weights).sum(), logits, retain_graph=True)
    (g2,) = torch.autograd.grad((got * weights).sum(), logits)
    (ref,) = torch.autograd.grad((want * weights).sum(), logits)
    assert g1.dtype == dtype
    torch.testing.assert_close(g1, ref)
    torch.testing.assert_close(g2, ref)
    with torch.no_grad():
        torch.testing.assert_close(token_nll(logits, targets), want.detach())
