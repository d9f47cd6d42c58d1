"""AdamNormalizer against the hand-written formula of docs/method.md, step 4 (through the
reference forms of tests/normalize_reference.py where a test needs the [n, d] matrices)."""
import io
import math

import normalize_reference as ref
import pytest
import torch

import colm.selection.passes as passes_mod
from colm import AdamNormalizer, CoresetConfig

B1, B2, EPS = 0.9, 0.999, 1e-8


def hand_feature(g, m, v, t):
    """Scalar formula: step t+1 bias correction of the per-example moments."""
    m_i = B1 * m + (1 - B1) * g
    v_i = B2 * v + (1 - B2) * g * g
    m_hat = m_i / (1 - B1 ** (t + 1))
    v_hat = v_i / (1 - B2 ** (t + 1))
    return m_hat / (math.sqrt(v_hat) + EPS), m_i, v_i


def test_first_step_uses_the_pool_second_moment():
    # With an empty history Adam's per-example formula gives sign vectors; the first step
    # instead divides by the pool's own root mean square per coordinate (docs/method.md).
    g = torch.tensor([[0.5, -2.0, 0.0], [1e-3, 3.0, -0.25]], dtype=torch.float64)
    norm = AdamNormalizer((B1, B2), EPS)
    feats, m_i, v_i = ref.normalize(norm, g)
    assert feats.shape == (2, 3) and norm.dim == 3 and norm.step == 0
    rms = g.square().mean(0).sqrt()
    for i in range(2):
        for j in range(3):
            _, mm, vv = hand_feature(float(g[i, j]), 0.0, 0.0, 0)
            assert feats[i, j].item() == pytest.approx(float(g[i, j]) / (float(rms[j]) + EPS), rel=1e-5, abs=1e-7)
            assert m_i[i, j].item() == pytest.approx(mm, rel=1e-6, abs=1e-12)
            assert v_i[i, j].item() == pytest.approx(vv, rel=1e-6, abs=1e-12)
    # not sign vectors: the two rows keep their relative sizes (they were +-1 before)
    assert abs(feats[0, 1].item()) != pytest.approx(abs(feats[1, 1].item()), rel=0.1)
    assert feats[0, 2].item() == 0.0


def test_first_step_without_seed_is_adams_formula():
    # the plain formula (no pool seed) is still what transform() applies before seeding
    norm = AdamNormalizer((B1, B2), EPS)
    g = torch.tensor([[0.5, -2.0]])
    feats = norm.transform(g)
    assert feats[0, 0].item() == pytest.approx(hand_feature(0.5, 0.0, 0.0, 0)[0], rel=1e-5)


def test_first_step_seed_is_cleared_by_the_update():
    norm = AdamNormalizer((B1, B2), EPS)
    g = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))
    _, m_i, v_i = ref.normalize(norm, g)
    ref.update(norm, m_i, v_i)
    assert norm.step == 1 and norm._pool_v is None
    feats, _, _ = ref.normalize(norm, g)  # step 2: Adam's formula with the history
    f, _, _ = hand_feature(float(g[0, 0]), float(norm.m[0]), float(norm.v[0]), 1)
    assert feats[0, 0].item() == pytest.approx(f, rel=1e-5)


def test_later_step_with_history_matches_formula():
    norm = AdamNormalizer((B1, B2), EPS)
    norm.load_state_dict({"m": torch.tensor([0.1, -0.2]), "v": torch.tensor([0.04, 0.01]), "step": 3})
    g = torch.tensor([[0.3, 0.1], [-1.0, 0.0]])
    feats, _, _ = ref.normalize(norm, g)
    for i in range(2):
        for j, (m, v) in enumerate([(0.1, 0.04), (-0.2, 0.01)]):
            f, _, _ = hand_feature(float(g[i, j]), m, v, 3)
            assert feats[i, j].item() == pytest.approx(f, rel=1e-5)


def test_update_sets_means_and_counts_steps():
    norm = AdamNormalizer((B1, B2), EPS)
    g = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    _, m_i, v_i = ref.normalize(norm, g)
    rows = torch.tensor([1, 4])
    ref.update(norm, m_i[rows], v_i[rows])
    assert norm.step == 1
    torch.testing.assert_close(norm.m, m_i[rows].mean(0))
    torch.testing.assert_close(norm.v, v_i[rows].mean(0))
    # empty selection: nothing changes
    before = norm.state_dict()
    ref.update(norm, m_i[:0], v_i[:0])
    assert norm.step == 1 and torch.equal(norm.m, before["m"])


def test_update_from_gradients_equals_update(monkeypatch):
    monkeypatch.setattr(passes_mod, "_CPU_BLOCK_ELEMENTS", 8)  # force several column blocks
    g = torch.randn(7, 10, generator=torch.Generator().manual_seed(1))
    rows = torch.tensor([0, 3, 6])
    a, b = AdamNormalizer(), AdamNormalizer()
    for _ in range(3):  # several steps so the history is non-trivial
        _, m_i, v_i = ref.normalize(a, g)
        ref.update(a, m_i[rows], v_i[rows])
        b.transform(g)
        ref.update_from_gradients(b, g, rows)
        g = g.roll(1, dims=0) * 1.5
    assert a.step == b.step == 3
    torch.testing.assert_close(a.m, b.m)
    torch.testing.assert_close(a.v, b.v)


def test_blocked_sums_and_column_transform(monkeypatch):
    monkeypatch.setattr(passes_mod, "_CPU_BLOCK_ELEMENTS", 16)
    gen = torch.Generator().manual_seed(2)
    g = torch.randn(5, 23, generator=gen)
    norm = AdamNormalizer()
    norm.load_state_dict({"m": torch.randn(23, generator=gen) * 0.1, "v": torch.rand(23, generator=gen) * 0.1, "step": 2})
    feats, _, _ = ref.normalize(norm, g)
    groups = torch.tensor([2, 0, 2, 3, 0])
    sums, raw_total = ref.feature_sums(norm, g, groups, 4)
    expected = torch.stack([feats[groups == k].sum(0) for k in range(4)])  # group 1 empty: zeros
    torch.testing.assert_close(sums, expected)
    torch.testing.assert_close(raw_total, g.sum(0))
    cols = torch.tensor([22, 0, 7])
    torch.testing.assert_close(norm.transform(g[:, cols], cols), feats[:, cols])


def test_dimension_change_and_bad_shapes():
    norm = AdamNormalizer()
    ref.normalize(norm, torch.randn(2, 5))
    with pytest.raises(ValueError, match="dimension changed"):
        ref.normalize(norm, torch.randn(2, 6))
    with pytest.raises(ValueError, match="2-D"):
        ref.normalize(norm, torch.randn(5))
    with pytest.raises(ValueError, match="betas"):
        AdamNormalizer((1.0, 0.5))
    with pytest.raises(ValueError, match="eps"):
        AdamNormalizer(eps=0.0)


def test_state_round_trip_through_torch_save():
    norm = AdamNormalizer.from_config(CoresetConfig(adam_betas=(0.8, 0.99), adam_eps=1e-6))
    g = torch.randn(4, 3)
    norm.transform(g)
    ref.update_from_gradients(norm, g, torch.tensor([0, 2]))
    buf = io.BytesIO()
    torch.save(norm.state_dict(), buf)
    buf.seek(0)
    other = AdamNormalizer()
    other.load_state_dict(torch.load(buf))
    assert other.step == 1 and other.betas == (0.8, 0.99) and other.eps == 1e-6
    assert torch.equal(other.m, norm.m) and torch.equal(other.v, norm.v)
    torch.testing.assert_close(ref.normalize(other, g)[0], ref.normalize(norm, g)[0], rtol=0, atol=0)


def test_pool_second_moment_is_shared_and_linear():
    norm = AdamNormalizer((B1, B2), EPS, second_moment="pool")
    norm.load_state_dict({"m": torch.tensor([0.1, -0.2]), "v": torch.tensor([0.04, 0.01]), "step": 3})
    g = torch.tensor([[0.3, 0.1], [-1.0, 0.0], [0.5, 2.0]])
    feats, _, _ = ref.normalize(norm, g)
    t = 4
    v_hat = (B2 * torch.tensor([0.04, 0.01]) + (1 - B2) * g.square().mean(0)) / (1 - B2**t)
    m_hat = (B1 * torch.tensor([0.1, -0.2]) + (1 - B1) * g) / (1 - B1**t)
    torch.testing.assert_close(feats, m_hat / (v_hat.sqrt() + EPS))
    # one preconditioner for all rows: the mean of the features is the feature of the mean
    torch.testing.assert_close(feats[:2].mean(0), norm.transform(g[:2].mean(0, keepdim=True))[0])


def test_state_round_trips_every_setting():
    # second_moment is saved with betas and eps: a history means nothing under other settings,
    # so a resumed normalizer takes the saved ones, whatever it was built with.
    norm = AdamNormalizer((0.8, 0.99), 1e-6, second_moment="pool")
    g = torch.randn(4, 3, generator=torch.Generator().manual_seed(3))
    norm.transform(g)
    ref.update_from_gradients(norm, g, torch.tensor([0, 2]))
    other = AdamNormalizer()
    other.load_state_dict(norm.state_dict())
    assert (other.betas, other.eps, other.second_moment, other.step) == ((0.8, 0.99), 1e-6, "pool", 1)
    h = torch.randn(4, 3, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(ref.normalize(other, h)[0], ref.normalize(norm, h)[0], rtol=0, atol=0)


def test_state_with_a_bad_setting_is_refused_and_changes_nothing():
    norm = AdamNormalizer()
    state = {**AdamNormalizer(second_moment="pool").state_dict(), "second_moment": "median"}
    with pytest.raises(ValueError, match="second_moment"):
        norm.load_state_dict(state)
    assert norm.second_moment == "per_example"
