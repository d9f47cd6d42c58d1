"""The documented plain-PyTorch loop (examples/plain_pytorch_loop.py) trains on coresets."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
from trainer_helpers import collator, mixture, tiny_llama

from colm import CoresetConfig


def load_example():
    path = Path(__file__).resolve().parents[1] / "examples" / "plain_pytorch_loop.py"
    spec = importlib.util.spec_from_file_location("plain_pytorch_loop", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("config", [
    CoresetConfig(),  # the default: no features
    CoresetConfig(within_source="facility_location", feature="zo", zo_probes=2),
])
def test_plain_loop_trains_on_selected_examples(config):
    example = load_example()
    rows = mixture({"big_a": 60, "big_b": 50, "rare": 10}).to_list()
    model = tiny_llama()
    before = [p.detach().clone() for p in model.parameters()]
    log = []
    example.train(
        model, rows, collator(), steps=4, batch_size=8, config=config,
        on_step=lambda step, loss, ids: log.append((step, loss, ids)),
    )
    assert [s for s, _, _ in log] == [0, 1, 2, 3]
    for _, loss, ids in log:
        assert math.isfinite(loss) and len(ids) == 8 == len(set(ids))
    assert any(not p.equal(q) for p, q in zip(model.parameters(), before))
