"""Sharding colm refuses (DeepSpeed, FSDP1, FSDP that accelerate would not turn on) fails with one
error naming what is supported; FSDP2 replay helpers are no-ops on an unsharded model. The
2-process FSDP2 runs themselves are in test_distributed.py (one torchrun launch)."""
from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import TrainingArguments

sys.path.insert(0, str(Path(__file__).parent))
from trainer_helpers import collator, mixture, tiny_llama  # noqa: E402

from colm import CoresetConfig, CoresetTrainer, gradient_features  # noqa: E402
from colm.features.replay import LastLayerReplay  # noqa: E402
from colm.features.sharded import is_sharded  # noqa: E402
from colm.integrations.sharding import SUPPORTED, ShardingNotSupportedError, sharding_problem  # noqa: E402

CPU = SimpleNamespace(type="cpu")


@pytest.fixture(autouse=True)
def no_launcher_env(monkeypatch):
    for name in ("ACCELERATE_USE_FSDP", "FSDP_VERSION", "ACCELERATE_USE_DEEPSPEED"):
        monkeypatch.delenv(name, raising=False)


def args(tmp_path, **kw):
    return TrainingArguments(str(tmp_path), use_cpu=True, report_to=[], **kw)


def test_plain_and_ddp_runs_pass(tmp_path):
    assert sharding_problem(args(tmp_path)) is None


def test_fsdp1_is_refused_naming_fsdp2(tmp_path):
    problem = sharding_problem(args(tmp_path, fsdp=True, fsdp_config={"fsdp_version": 1}))
    assert problem.startswith("FSDP1 (fsdp_version 1, FullyShardedDataParallel) is not supported")
    assert SUPPORTED in problem


def test_accelerate_launch_use_fsdp_defaults_to_fsdp1_and_is_refused(tmp_path, monkeypatch):
    # `accelerate launch --use_fsdp` without --fsdp_version 2 sets FSDP_VERSION=1
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "1")
    assert sharding_problem(args(tmp_path)).startswith("FSDP1")
    monkeypatch.setenv("FSDP_VERSION", "2")
    assert "FSDP2 was asked for but accelerate does not run FSDP on cpu" in sharding_problem(args(tmp_path))


@pytest.mark.parametrize("how", ("argument", "environment", "accelerator"))
def test_deepspeed_is_refused(how, monkeypatch):
    run = SimpleNamespace(deepspeed="ds_config.json" if how == "argument" else None, fsdp=None, device=CPU)
    if how == "environment":
        monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    accelerator = (SimpleNamespace(state=SimpleNamespace(distributed_type="DistributedType.DEEPSPEED", fsdp_plugin=None))
                   if how == "accelerator" else None)
    problem = sharding_problem(run, accelerator)
    assert problem.startswith("DeepSpeed (ZeRO) is not supported") and SUPPORTED in problem


def test_fsdp2_that_accelerate_dropped_is_refused():
    # what accelerate does on a machine without GPUs: the plugin is dropped, MULTI_CPU remains
    run = SimpleNamespace(deepspeed=None, fsdp=True, fsdp_config={"version": 2}, device=SimpleNamespace(type="cuda"))
    dropped = SimpleNamespace(state=SimpleNamespace(distributed_type="DistributedType.MULTI_CPU", fsdp_plugin=None))
    assert "would silently fall back to plain data parallelism" in sharding_problem(run, dropped)
    kept = SimpleNamespace(state=SimpleNamespace(distributed_type="DistributedType.FSDP",
                                                 fsdp_plugin=SimpleNamespace(fsdp_version=2)))
    assert sharding_problem(run, kept) is None
    kept.state.fsdp_plugin.fsdp_version = 1
    assert sharding_problem(run, kept).startswith("FSDP1")


def test_coreset_trainer_refuses_fsdp1_before_touching_the_data(tmp_path):
    class Untouchable(torch.utils.data.Dataset):
        def __len__(self):
            raise AssertionError("the dataset was read before the refusal")

    with pytest.raises(ShardingNotSupportedError, match="FSDP1"):
        CoresetTrainer(model=tiny_llama(), args=args(tmp_path, fsdp=True, fsdp_config={"fsdp_version": 1}),
                       train_dataset=Untouchable(), data_collator=collator(),
                       coreset_config=CoresetConfig(pool_factor=2))


def test_replay_of_an_unsharded_model_is_unchanged_by_the_fsdp_path():
    # the FSDP2 machinery must not change what an unsharded model computes: no FSDP module found,
    # capture still stopped before the last layer, features as before
    model = tiny_llama()
    rows = mixture({"a": 4}, seed=2)
    batch = collator()([{k: r[k] for k in ("input_ids", "labels")} for r in rows])
    assert not is_sharded(model)
    replay = LastLayerReplay(model)
    assert not replay._tail.active
    calls = []
    handle = model.lm_head.register_forward_pre_hook(lambda m, a: calls.append(1))
    replay.capture(batch)
    handle.remove()
    assert calls == []  # the unsharded capture never reaches the LM head
    targets = {"model.layers.1.self_attn.v_proj.weight": model.model.layers[1].self_attn.v_proj.weight}
    assert replay.current(targets)["model.layers.1.self_attn.v_proj.weight"] is targets["model.layers.1.self_attn.v_proj.weight"]
    f = gradient_features(model, batch, CoresetConfig(within_source="facility_location", feature="zo", zo_probes=2))
    assert f.shape == (4, 512) and torch.isfinite(f).all()


def test_colm_train_under_accelerate_use_fsdp_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    # what `accelerate launch --use_fsdp` (no --fsdp_version: FSDP1) leaves in each worker's env
    from colm.cli import main

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "1")
    out = tmp_path / "run"
    code = main(["train", "--output-dir", str(out), "--max-steps", "1", "--use-cpu", "true"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("colm train: error: FSDP1 (fsdp_version 1") and "FSDP2" in err[0]
    assert not out.exists()
