"""benchmarks/pretrained.py at toy size on a tiny GGUF Llama: every arm trains, is evaluated
(per-source loss and exact match) and lands in the results file; the model travels in parts."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from tiny_gguf import write_tiny_llama

pytest.importorskip("gguf")
SCRIPT = Path(__file__).parents[1] / "benchmarks" / "pretrained.py"


def load_script():
    spec = importlib.util.spec_from_file_location("pretrained_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["pretrained_benchmark"] = module
    spec.loader.exec_module(module)
    return module


def test_toy_run_writes_every_arm_and_the_parts_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("COLM_CACHE", str(tmp_path / "cache"))
    script = load_script()
    model = tmp_path / "tiny.gguf"
    write_tiny_llama(model)
    # the device takes 64 MiB a call: the GGUF goes in parts, joined back byte for byte
    monkeypatch.setattr(script, "PART_BYTES", 20_000)
    parts = script.split_model(model, tmp_path / "parts")
    assert len(parts) > 1 and all(p.stat().st_size <= 20_000 for p in parts)
    joined = Path(script.resolve_model(str(tmp_path / "parts")))
    assert joined.read_bytes() == model.read_bytes()

    out = tmp_path / "results.json"
    code = script.main(["--toy", "--model", str(tmp_path / "parts"), "--out", str(out),
                        "--lora-r", "2", "--template", "chat", "--max-length", "512",
                        "--workdir", str(tmp_path / "work")])
    assert code == 0
    runs = json.loads(out.read_text())["runs"]
    assert sorted(r["arm"] for r in runs) == sorted(script.ARMS)
    for r in runs:
        assert r["val_loss_mean"] > 0 and 0.0 <= r["em_mean"] <= 1.0
        per = r["val_loss_per_source"]  # the natural mixture lies between the best and worst source
        assert min(per.values()) <= r["val_loss_natural"] <= max(per.values())
        assert set(r["em_n"]) == {"gsm8k", "svamp", "numglue_1"} and all(n == 2 for n in r["em_n"].values())
    assert "stratified_b_of_2b" in script.table(runs)
