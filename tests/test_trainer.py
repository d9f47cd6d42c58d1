"""CoresetTrainer against a plain Trainer on a tiny Llama: step accounting, identity at
pool_factor=1, pool membership and budget, private columns, LoRA, weighting and exact resume."""
from __future__ import annotations

import json
import math

import pytest
import torch
from trainer_helpers import StopAfter, collator, mixture, tiny_llama, training_args
from transformers import Trainer, TrainerCallback

from colm import CoresetConfig, CoresetTrainer
from colm.integrations.trainer import SELECTIONS_FILE, SELECTOR_STATE_FILE, split_evenly

SIZES = {"big_a": 60, "big_b": 50, "rare": 10}


class Recorder(TrainerCallback):
    """Learning rate seen at every optimizer step, plus the logged losses."""

    def __init__(self):
        self.lrs, self.losses, self.steps = [], [], 0

    def on_optimizer_step(self, args, state, control, optimizer=None, **kw):
        self.lrs.append(optimizer.param_groups[0]["lr"])
        self.steps += 1

    def on_log(self, args, state, control, logs=None, **kw):
        if logs and "loss" in logs:
            self.losses.append(logs["loss"])


class TrainedBatches(CoresetTrainer):
    """Remembers the input_ids of every micro-batch the model is trained on."""

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.seen = getattr(self, "seen", [])
        self.seen.append((self.state.global_step, inputs["input_ids"].clone(), inputs["attention_mask"].clone()))
        return super().training_step(model, inputs, num_items_in_batch)


def run(trainer_cls, tmp_path, config=None, dataset=None, callbacks=(), **arg_overrides):
    rec = Recorder()
    kwargs = {} if trainer_cls is Trainer else {"coreset_config": config}
    trainer = trainer_cls(
        model=tiny_llama(), args=training_args(tmp_path, **arg_overrides),
        train_dataset=dataset if dataset is not None else mixture(SIZES),
        data_collator=collator(), callbacks=[rec, *callbacks], **kwargs,
    )
    trainer.train()
    return trainer, rec


@pytest.mark.parametrize("arg_overrides", [{"max_steps": 6}, {"max_steps": -1, "num_train_epochs": 2}])
def test_same_steps_and_learning_rates_as_trainer(tmp_path, arg_overrides):
    plain_trainer, plain = run(Trainer, tmp_path / "plain", **arg_overrides)
    _, colm = run(CoresetTrainer, tmp_path / "colm", CoresetConfig(pool_factor=2, zo_probes=2, within_source="facility_location", feature="zo"), **arg_overrides)
    if arg_overrides["max_steps"] < 0:
        # An epoch is one pass over the data as pools: half as many optimizer steps per epoch.
        # 120 rows: 15 pool chunks of 8 per epoch -> 8 steps; Trainer: 30 batches of 4 -> 15 steps
        assert colm.steps == 2 * math.ceil(math.ceil(120 / 8) / 2) == 16
        assert plain.steps == 2 * math.ceil(math.ceil(120 / 4) / 2) == 30
        assert plain_trainer.state.epoch == pytest.approx(2.0)
    else:
        assert colm.steps == plain.steps == 6
        assert colm.lrs == pytest.approx(plain.lrs, abs=0)


def test_pool_factor_one_is_exactly_trainer(tmp_path):
    _, plain = run(Trainer, tmp_path / "plain")
    _, colm = run(CoresetTrainer, tmp_path / "colm", CoresetConfig(pool_factor=1))
    assert colm.losses == plain.losses and len(colm.losses) == 6
    assert colm.lrs == plain.lrs


def test_trains_exactly_the_selected_examples(tmp_path):
    ds = mixture(SIZES)
    trainer = TrainedBatches(
        model=tiny_llama(), args=training_args(tmp_path / "logged"), train_dataset=ds,
        data_collator=collator(), coreset_config=CoresetConfig(pool_factor=2, zo_probes=2, within_source="facility_location", feature="zo"),
        log_selections=True,
    )
    trainer.train()
    records = [json.loads(l) for l in open(tmp_path / "logged" / SELECTIONS_FILE)]
    assert [r["step"] for r in records] == list(range(1, 7))
    budget = 4 * 2  # per_device_train_batch_size x gradient_accumulation_steps
    for rec in records:
        assert len(rec["pool_ids"]) == 2 * budget
        assert len(rec["selected_ids"]) == budget == len(set(rec["selected_ids"]))
        assert set(rec["selected_ids"]) <= set(rec["pool_ids"])
        # the rare source is below the mean size: every pool example of it is kept
        n_rare_pool = rec["pool_sources"].get("rare", 0)
        assert rec["selected_sources"].count("rare") == min(n_rare_pool, budget)
    # what the model trained on, step by step, is exactly the selected rows
    for step, rec in enumerate(records):
        trained = [
            ids[mask.bool()].tolist()
            for s, batch_ids, batch_mask in trainer.seen if s == step
            for ids, mask in zip(batch_ids, batch_mask)
        ]
        expected = [ds[i]["input_ids"] for i in rec["selected_ids"]]
        assert sorted(map(tuple, trained)) == sorted(map(tuple, expected))


def test_source_never_reaches_model_or_collator(tmp_path):
    inner = collator()

    def strict_collator(features):
        for f in features:
            assert "source" not in f and "colm_example_id" not in f, sorted(f)
        return inner(features)

    trainer = CoresetTrainer(
        model=tiny_llama(), args=training_args(tmp_path, max_steps=2),
        train_dataset=mixture(SIZES), data_collator=strict_collator,
        coreset_config=CoresetConfig(pool_factor=2, zo_probes=1, within_source="facility_location", feature="zo"),
    )
    trainer.train()
    assert trainer.state.global_step == 2


def test_selection_telemetry_is_logged(tmp_path):
    trainer = CoresetTrainer(
        model=tiny_llama(), args=training_args(tmp_path, max_steps=3),
        train_dataset=mixture(SIZES), data_collator=collator(),
        coreset_config=CoresetConfig(pool_factor=2, within_source="facility_location", feature="zo", zo_probes=1),
    )
    trainer.train()
    history = [h for h in trainer.state.log_history if "loss" in h]
    assert len(history) == 3
    for h in history:
        for key in ("coreset/select_ms", "coreset/kept_small", "coreset/match_error", "coreset/objective"):
            assert key in h
        per_source = sum(v for k, v in h.items() if k.startswith("coreset/selected/"))
        assert per_source == 8


@pytest.mark.parametrize("feature", ["zo", "exact", "hidden"])
def test_each_feature_type_trains(tmp_path, feature):
    trainer, rec = run(CoresetTrainer, tmp_path, CoresetConfig(pool_factor=2, feature=feature, zo_probes=2, within_source="facility_location"), max_steps=2)
    assert rec.steps == 2 and all(math.isfinite(l) for l in rec.losses)


def test_weighted_loss_uses_cluster_weights(tmp_path):
    _, uniform = run(CoresetTrainer, tmp_path / "u", CoresetConfig(pool_factor=2, zo_probes=2, within_source="facility_location", feature="zo"), max_steps=3)
    _, weighted = run(CoresetTrainer, tmp_path / "w", CoresetConfig(pool_factor=2, zo_probes=2, weighted=True, within_source="facility_location", feature="zo"), max_steps=3)
    # first step selects the same coreset; weights change the loss unless all are equal
    assert weighted.steps == 3 and all(math.isfinite(l) for l in weighted.losses)
    assert weighted.losses != uniform.losses


def test_lora_gradient_checkpointing_and_eval(tmp_path):
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(
        tiny_llama(), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    )
    ds = mixture(SIZES)
    split = ds.train_test_split(test_size=0.2, seed=0)
    trainer = CoresetTrainer(
        model=model,
        args=training_args(tmp_path, max_steps=4, eval_strategy="steps", eval_steps=2,
                           gradient_checkpointing=True),
        train_dataset=split["train"], eval_dataset=split["test"], data_collator=collator(),
        coreset_config=CoresetConfig(pool_factor=2, zo_probes=2, within_source="facility_location", feature="zo"),
    )
    trainer.train()
    evals = [h for h in trainer.state.log_history if "eval_loss" in h]
    assert len(evals) == 2 and all(math.isfinite(h["eval_loss"]) for h in evals)


def test_resume_equals_uninterrupted(tmp_path):
    cfg = CoresetConfig(pool_factor=2, zo_probes=2, within_source="facility_location", feature="zo")
    ds = mixture(SIZES)

    def make(out, max_steps):
        return CoresetTrainer(
            model=tiny_llama(), args=training_args(out, max_steps=max_steps, save_strategy="steps", save_steps=3),
            train_dataset=ds, data_collator=collator(), coreset_config=cfg, log_selections=True,
        )

    full = make(tmp_path / "full", 6)
    full.train()
    full_log = [json.loads(l) for l in open(tmp_path / "full" / SELECTIONS_FILE)]

    # the interrupted run is stopped right after its checkpoint at step 3 (same schedule) ...
    part = make(tmp_path / "part", 6)
    part.add_callback(StopAfter(3))
    part.train()
    assert part.state.global_step == 3
    assert (tmp_path / "part" / "checkpoint-3" / SELECTOR_STATE_FILE).is_file()
    # ... and a fresh process resumes from it
    resumed = make(tmp_path / "part", 6)
    resumed.train(resume_from_checkpoint=True)
    part_log = [json.loads(l) for l in open(tmp_path / "part" / SELECTIONS_FILE)]
    assert [r["step"] for r in part_log] == list(range(1, 7))
    assert [r["selected_ids"] for r in part_log] == [r["selected_ids"] for r in full_log]
    full_loss = [h["loss"] for h in full.state.log_history if "loss" in h][-1]
    resumed_loss = [h["loss"] for h in resumed.state.log_history if "loss" in h][-1]
    assert resumed_loss == pytest.approx(full_loss, rel=1e-5)
    for (n1, p1), (_n2, p2) in zip(full.model.named_parameters(), resumed.model.named_parameters()):
        torch.testing.assert_close(p1, p2, rtol=1e-5, atol=1e-6, msg=n1)


def test_resume_from_a_checkpoint_without_selector_state_is_refused(tmp_path):
    plain = Trainer(model=tiny_llama(), args=training_args(tmp_path, max_steps=2, save_strategy="steps", save_steps=2),
                    train_dataset=mixture(SIZES), data_collator=collator())
    plain.train()
    trainer = CoresetTrainer(model=tiny_llama(), args=training_args(tmp_path, max_steps=4),
                             train_dataset=mixture(SIZES), data_collator=collator(),
                             coreset_config=CoresetConfig(pool_factor=2, within_source="facility_location", feature="zo"))
    with pytest.raises(ValueError, match=SELECTOR_STATE_FILE):
        trainer.train(resume_from_checkpoint=True)


def test_split_evenly():
    assert split_evenly(list(range(7)), 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert split_evenly([], 2) == [[], []]


def test_bf16_autocast_on_cpu(tmp_path):
    # Scoring runs outside the Trainer's autocast (fp32 features); training steps under bf16.
    trainer, rec = run(CoresetTrainer, tmp_path, CoresetConfig(pool_factor=2, zo_probes=2, within_source="facility_location", feature="zo"), max_steps=2, bf16=True)
    assert rec.steps == 2 and all(math.isfinite(l) for l in rec.losses)
    assert trainer.last_selection is not None and len(trainer.last_selection.indices) == 8


def test_int_sources_with_the_default_collator(tmp_path):
    # Fixed-length rows so transformers' default_data_collator (no padding) can stack them.
    ds = mixture(SIZES, min_len=10, max_len=10)
    names = {name: i for i, name in enumerate(SIZES)}
    ds = ds.map(lambda r: {"source": names[r["source"]]})
    trainer = CoresetTrainer(
        model=tiny_llama(), args=training_args(tmp_path, max_steps=2), train_dataset=ds,
        coreset_config=CoresetConfig(pool_factor=2, within_source="facility_location", feature="zo"), log_selections=True,
    )
    trainer.train()
    records = [json.loads(l) for l in open(tmp_path / SELECTIONS_FILE)]
    assert len(records) == 2 and all(len(r["selected_ids"]) == 8 for r in records)
    # the rare source (id 2) is below the mean size: kept whole
    for r in records:
        assert r["selected_sources"].count("2") == r["pool_sources"].get("2", 0)


# ------------------------------------------------------------- the stratified control
class CountForwards(TrainerCallback):
    """Model forward calls per optimizer step (a forward hook on the model)."""

    def __init__(self, model):
        self.per_step, self._count = [], 0
        model.register_forward_hook(lambda *a: setattr(self, "_count", self._count + 1))

    def on_step_end(self, args, state, control, **kw):
        self.per_step.append(self._count)
        self._count = 0


def test_random_within_source_runs_no_scoring_forward(tmp_path):
    # Plain training of GA=2 micro-batches is 2 model forwards per step; the stratified control
    # adds none, while facility location adds the pool's scoring passes.
    counts = {}
    for method in ("random", "facility_location"):
        model = tiny_llama()
        counter = CountForwards(model)
        trainer = CoresetTrainer(
            model=model, args=training_args(tmp_path / method, max_steps=3), train_dataset=mixture(SIZES),
            data_collator=collator(), coreset_config=CoresetConfig(pool_factor=2, within_source=method),
            callbacks=[counter], log_selections=True,
        )
        trainer.train()
        counts[method] = counter.per_step
    assert counts["random"] == [2, 2, 2]
    assert all(c > 2 for c in counts["facility_location"])
    records = [json.loads(l) for l in open(tmp_path / "random" / SELECTIONS_FILE)]
    for rec in records:  # small sources whole, selected from the pool, the full budget
        assert len(rec["selected_ids"]) == 8 and set(rec["selected_ids"]) <= set(rec["pool_ids"])
        assert rec["selected_sources"].count("rare") == rec["pool_sources"].get("rare", 0)
        assert "match_error" not in rec["stats"]


def test_random_within_source_resumes_exactly(tmp_path):
    cfg = CoresetConfig(pool_factor=2, within_source="random")
    ds = mixture(SIZES)

    def make(out):
        return CoresetTrainer(
            model=tiny_llama(), args=training_args(out, max_steps=6, save_strategy="steps", save_steps=3),
            train_dataset=ds, data_collator=collator(), coreset_config=cfg, log_selections=True,
        )

    full = make(tmp_path / "full")
    full.train()
    part = make(tmp_path / "part")
    part.add_callback(StopAfter(3))
    part.train()
    resumed = make(tmp_path / "part")
    resumed.train(resume_from_checkpoint=True)
    logs = [[json.loads(l)["selected_ids"] for l in open(tmp_path / d / SELECTIONS_FILE)] for d in ("full", "part")]
    assert logs[0] == logs[1] and len(logs[0]) == 6
    for p1, p2 in zip(full.model.parameters(), resumed.model.parameters()):
        torch.testing.assert_close(p1, p2, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------- rows without supervision
def test_rows_without_supervised_tokens_are_never_selected(tmp_path, caplog):
    ds = mixture(SIZES, seed=3)
    # every fourth row loses its supervision (as when truncation cuts the response away)
    empty_ids = set(range(0, len(ds), 4))
    ds = ds.map(lambda r, i: {"labels": [-100] * len(r["labels"]) if i in empty_ids else r["labels"]}, with_indices=True)
    with caplog.at_level("WARNING", logger="colm.integrations.trainer"):
        trainer = CoresetTrainer(
            model=tiny_llama(), args=training_args(tmp_path, max_steps=4), train_dataset=ds,
            data_collator=collator(), coreset_config=CoresetConfig(pool_factor=2, within_source="facility_location", feature="zo"), log_selections=True,
        )
        trainer.train()
    records = [json.loads(l) for l in open(tmp_path / SELECTIONS_FILE)]
    dropped = 0
    for rec in records:
        assert not set(rec["selected_ids"]) & empty_ids
        assert not set(rec["pool_ids"]) & empty_ids  # not pool members either
        assert len(rec["selected_ids"]) == 8
        dropped += rec["stats"]["unsupervised_rows"]
    assert dropped > 0
    assert sum("no supervised token" in r.message for r in caplog.records) == 1  # warned once


# ------------------------------------------------------------- loss averaging
class LossRecorder(CoresetTrainer):
    """Sums the losses compute_loss returns over each optimizer step's micro-batches."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.step_inputs = getattr(self, "step_inputs", [])
        if self.state.global_step == 0:
            self.step_inputs.append({k: v.clone() for k, v in inputs.items() if k in ("input_ids", "attention_mask", "labels")})
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if self.state.global_step == 0:
            self.first_step_loss = getattr(self, "first_step_loss", 0.0) + float(loss.detach())
        return loss


@pytest.mark.parametrize("pool_factor", [1, 2])
@pytest.mark.parametrize("average", ["token", "example"])
def test_loss_average_matches_hand_computation(tmp_path, average, pool_factor):
    from colm.features import per_example_nll

    def peaked_llama():
        # a random model has near-uniform token losses, where both averages coincide; larger
        # output weights make per-example losses differ
        model = tiny_llama()
        with torch.no_grad():
            model.lm_head.weight.mul_(30.0)
        return model

    cfg = CoresetConfig(pool_factor=pool_factor, loss_average=average, within_source="random")
    trainer = LossRecorder(
        model=peaked_llama(), args=training_args(tmp_path, max_steps=1), train_dataset=mixture(SIZES),
        data_collator=collator(), coreset_config=cfg,
    )
    trainer.train()
    # the first step ran on the initial weights: recompute its loss by hand
    model = peaked_llama().eval()
    sums, counts = [], []
    with torch.no_grad():
        for batch in trainer.step_inputs:
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            s, c = per_example_nll(logits, batch["labels"])
            sums.append(s)
            counts.append(c)
    sums, counts = torch.cat(sums).double(), torch.cat(counts).double()
    assert sums.numel() == 8
    expected = (sums / counts).mean() if average == "example" else sums.sum() / counts.sum()
    assert trainer.first_step_loss == pytest.approx(float(expected), rel=1e-5)
    if average == "example":  # and it differs from the token average on rows of unequal length
        assert float(expected) != pytest.approx(float(sums.sum() / counts.sum()), rel=1e-3)


# ------------------------------------------------------------- selector state file
def test_selector_state_is_stored_without_pickle_and_old_files_still_load(tmp_path):
    from colm.selection.state import load_selector_state

    cfg = CoresetConfig(pool_factor=2, within_source="facility_location", feature="zo")
    ds = mixture(SIZES)
    trainer = CoresetTrainer(
        model=tiny_llama(), args=training_args(tmp_path, max_steps=2, save_strategy="steps", save_steps=2),
        train_dataset=ds, data_collator=collator(), coreset_config=cfg,
    )
    trainer.train()
    path = tmp_path / "checkpoint-2" / SELECTOR_STATE_FILE
    assert path.read_bytes()[:8] != b"\x80\x04\x95" and path.suffix == ".safetensors"
    config, state = load_selector_state(path)
    # the saved config is the one the trainer ran: selection_seed None resolved to the training seed
    assert config == {**cfg.to_dict(), "selection_seed": trainer.args.seed} and state["calls"] == 2
    torch.testing.assert_close(state["normalizer"]["v"], trainer.selector.normalizer.v)
    # a checkpoint of an older colm (pickled colm_selector.pt) still resumes
    legacy = tmp_path / "checkpoint-2" / "colm_selector.pt"
    torch.save({"config": config, "selector": state}, legacy)
    path.unlink()
    again = CoresetTrainer(
        model=tiny_llama(), args=training_args(tmp_path, max_steps=3), train_dataset=ds,
        data_collator=collator(), coreset_config=cfg,
    )
    again.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    assert again.state.global_step == 3 and again.selector.calls == 3


class _Boom:
    def __reduce__(self):
        return (open, ("/tmp/colm_pickle_ran", "w"))


def test_a_crafted_pickle_checkpoint_does_not_run_code(tmp_path):
    import os

    from colm.selection.state import load_selector_state

    bad = tmp_path / "colm_selector.pt"
    torch.save({"config": {}, "selector": {"version": 1, "x": _Boom()}}, bad)
    if os.path.exists("/tmp/colm_pickle_ran"):
        os.unlink("/tmp/colm_pickle_ran")
    with pytest.raises(ValueError, match="cannot be read safely"):
        load_selector_state(bad)
    assert not os.path.exists("/tmp/colm_pickle_ran")
    torn = tmp_path / "colm_selector.safetensors"
    torn.write_bytes(b"\x10\x00\x00")
    with pytest.raises(ValueError, match="colm_selector.safetensors"):
        load_selector_state(torn)


@pytest.mark.parametrize("config", [
    CoresetConfig(pool_factor=2, within_source="facility_location", feature="zo", zo_probes=1),
    CoresetConfig(pool_factor=2, within_source="mean_match", feature="exact", adam_second_moment="pool"),
])
def test_only_large_source_rows_are_scored_and_the_selections_are_unchanged(tmp_path, config, monkeypatch):
    import colm.integrations.trainer as trainer_module

    scored_rows = {}
    real = trainer_module.gradient_features

    def counting(model, batches, cfg, step, **kw):
        scored_rows.setdefault(label, []).append(sum(b["input_ids"].shape[0] for b in batches))
        return real(model, batches, cfg, step, **kw)

    monkeypatch.setattr(trainer_module, "gradient_features", counting)
    records, params = {}, {}
    for label in ("large_only", "every_row"):
        if label == "every_row":  # the behaviour before: every pool row scored
            monkeypatch.setattr(CoresetTrainer, "_rows_to_score", lambda self, rows: None)
        trainer = CoresetTrainer(
            model=tiny_llama(), args=training_args(tmp_path / label, max_steps=4), train_dataset=mixture(SIZES),
            data_collator=collator(), coreset_config=config, log_selections=True,
        )
        trainer.train()
        records[label] = [json.loads(line) for line in open(tmp_path / label / SELECTIONS_FILE)]
        params[label] = [p.detach().clone() for p in trainer.model.parameters()]
    for a, b in zip(records["large_only"], records["every_row"]):
        assert a["selected_ids"] == b["selected_ids"]
    assert all(torch.equal(x, y) for x, y in zip(params["large_only"], params["every_row"]))
    rare = [r["pool_sources"].get("rare", 0) for r in records["large_only"]]
    assert scored_rows["every_row"] == [16] * 4  # pool = 2 x (4 x 2)
    assert scored_rows["large_only"] == [16 - k for k in rare] and sum(rare) > 0
