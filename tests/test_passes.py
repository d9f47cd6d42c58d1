"""``passes.all_finite``: the shortcut through the sum must never call a bad tensor finite, and
finite values whose sum overflows must still count as finite."""
import pytest
import torch

from colm.selection.passes import all_finite


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_all_finite_matches_isfinite(dtype):
    big = torch.finfo(dtype).max
    nan, inf = float("nan"), float("inf")
    cases = {
        "plain": torch.randn(7, 5, dtype=dtype),
        "empty": torch.empty(0, 3, dtype=dtype),
        "sum overflows": torch.full((4, 3), big / 2, dtype=dtype),
        "nan": torch.tensor([1.0, nan, 2.0], dtype=dtype),
        "inf": torch.tensor([1.0, inf], dtype=dtype),
        "-inf": torch.tensor([-inf, 1.0], dtype=dtype),
        "inf and -inf (sum is nan)": torch.tensor([inf, -inf], dtype=dtype),
        "nan among overflowing values": torch.tensor([big, big, nan], dtype=dtype),
    }
    expected = {"plain": True, "empty": True, "sum overflows": True}
    for name, x in cases.items():
        assert all_finite(x) is expected.get(name, False), name
