"""No silent long phase: GGUF conversion, tokenization, the pseudo-source embedding pass,
evaluation and generation each report progress through colm.phases; bars are drawn only when a
front end turned them on, on a terminal, on rank 0."""
from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from colm import phases

sys.path.insert(0, str(Path(__file__).parent))


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture
def bars_on():
    phases.enable(True)
    yield
    phases.enable(False)


def drawn(monkeypatch, stream) -> str:
    monkeypatch.setattr(sys, "stderr", stream)
    assert list(phases.track(range(3), "tokenizing")) == [0, 1, 2]
    with phases.phase("converting", total=2) as bar:
        bar.update(2)
    return stream.getvalue()


def test_bars_only_when_enabled_on_a_terminal_on_rank_0(monkeypatch, bars_on):
    monkeypatch.delenv("RANK", raising=False)
    out = drawn(monkeypatch, Terminal())
    assert "tokenizing:" in out and "/3 " in out and "converting:" in out  # drawn (then cleared: leave=False)
    assert drawn(monkeypatch, io.StringIO()) == ""  # not a terminal: tqdm draws nothing
    monkeypatch.setenv("RANK", "1")
    assert drawn(monkeypatch, Terminal()) == ""
    monkeypatch.delenv("RANK")
    phases.enable(False)  # the library's default, and `--disable-tqdm`
    assert drawn(monkeypatch, Terminal()) == ""


def test_every_long_phase_reports_progress(tmp_path, monkeypatch):
    pytest.importorskip("gguf")
    import torch
    from datasets import Dataset
    from tiny_gguf import write_tiny_llama

    from colm.data import MixtureCollator, tokenize_mixture
    from colm.evaluation import generation_exact_match, per_source_loss
    from colm.integrations.pseudo_sources.dataset_pass import embed_dataset
    from colm.models.default import load_model_and_tokenizer

    seen: list[str] = []

    def track(iterable, desc, total=None, unit="batch"):
        seen.append(desc)
        yield from iterable

    class Recorder:
        def __init__(self, desc):
            seen.append(desc)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n=1):
            pass

        def set_description_str(self, desc):
            seen.append(desc)

    monkeypatch.setattr(phases, "track", track)
    monkeypatch.setattr(phases, "phase", lambda desc, total=None, unit="step": Recorder(desc))
    torch.manual_seed(0)
    write_tiny_llama(tmp_path / "tiny.gguf")
    model, tokenizer = load_model_and_tokenizer(tmp_path / "tiny.gguf", colm_cache_dir=tmp_path / "cache")
    raw = Dataset.from_list([{"prompt": f"{i}+{i}?", "response": f"the answer is {2 * i}.", "source": s}
                             for s in ("a", "b") for i in range(3)])
    data, _ = tokenize_mixture(raw, tokenizer, max_length=64)
    per_source_loss(model, data, pad_token_id=tokenizer.pad_token_id or 0, batch_size=4)
    generation_exact_match(model, tokenizer, raw, template="{prompt}", max_new_tokens=2,
                           max_prompt_length=32, batch_size=4)
    embed_dataset(model, data, MixtureCollator(tokenizer.pad_token_id or 0), chunk_size=4)
    assert any(d.startswith("GGUF tiny.gguf: dequantizing") for d in seen), seen
    assert any(d.startswith("GGUF tiny.gguf: writing") for d in seen), seen
    for desc in ("tokenizing", "evaluating", "generating", "pseudo-sources: embedding the dataset"):
        assert desc in seen, seen
