"""Pseudo-sources in CoresetTrainer (tiny Llama): the warm-up trains random rows without scoring,
then k-means clusters of the hidden states are the sources (small clusters kept whole), the
data's own `source` column is never used, exact resume inside and after the warm-up, the
checkpoint file, telemetry, and bad settings."""
from __future__ import annotations

import json

import pytest
import torch
from trainer_helpers import StopAfter, collator, mixture, separable, tiny_llama, training_args
from transformers import TrainerCallback

from colm import CoresetConfig, CoresetTrainer
from colm.integrations.checkpoints import CheckpointError
from colm.integrations.pseudo_sources import STATE_FILE, adjusted_rand_index
from colm.integrations.trainer import SELECTIONS_FILE, SELECTOR_STATE_FILE

SIZES = {"big_a": 60, "big_b": 50, "rare": 10}
PSEUDO = dict(within_source="facility_location", pool_factor=2, zo_probes=2, pseudo_sources=3, pseudo_source_warmup_steps=2)


class CountForwards(TrainerCallback):
    """Forward calls of the decoder per optimizer step (a pre-hook: it also counts passes that a
    hook stops before the LM head)."""

    def __init__(self, model):
        self.per_step, self._count = [], 0
        model.model.register_forward_pre_hook(lambda *a: setattr(self, "_count", self._count + 1))

    def on_step_end(self, args, state, control, **kw):
        self.per_step.append(self._count)
        self._count = 0


def make(out, dataset, max_steps=6, config=None, callbacks=(), model=None, **args):
    return CoresetTrainer(
        model=model or tiny_llama(), args=training_args(out, max_steps=max_steps, **args), train_dataset=dataset,
        data_collator=collator(), coreset_config=config or CoresetConfig(**PSEUDO), log_selections=True,
        callbacks=list(callbacks),
    )


def selections(out):
    return [json.loads(line) for line in open(out / SELECTIONS_FILE)]


def test_warm_up_trains_random_rows_then_clusters_are_the_sources(tmp_path):
    ds = separable(SIZES)
    model = tiny_llama()
    counter = CountForwards(model)
    trainer = make(tmp_path, ds, model=model, callbacks=[counter])
    trainer.train()
    records = selections(tmp_path)
    # warm-up: a uniform random batch of each pool, with no scoring pass (2 micro-batch forwards)
    for rec in records[:2]:
        assert rec["pool_sources"] == {"warmup": 16}
        assert len(set(rec["selected_ids"])) == 8 and set(rec["selected_ids"]) <= set(rec["pool_ids"])
    assert counter.per_step[:2] == [2, 2]
    # step 3 embeds all 120 rows before it selects (30 chunks of 4), later steps score the pool
    assert counter.per_step[2] > 30 and all(c > 2 for c in counter.per_step[3:])
    state = trainer.pseudo_sources.state
    assert state.fitted_at_step == 2
    # the sources are one repeated token each: the clusters are exactly the sources
    truth = ds["source"]
    assert adjusted_rand_index(state.assignment.tolist(), truth) == pytest.approx(1.0)
    assert state.sizes() == {"cluster_0": 60, "cluster_1": 50, "cluster_2": 10}
    for rec in records[2:]:
        # every row is labelled by its own cluster, and the rare cluster is kept whole
        assert rec["selected_sources"] == [f"cluster_{int(state.assignment[i])}" for i in rec["selected_ids"]]
        assert set(rec["pool_sources"]) <= {"cluster_0", "cluster_1", "cluster_2"}
        assert rec["selected_sources"].count("cluster_2") == rec["pool_sources"].get("cluster_2", 0)
        assert len(rec["selected_ids"]) == 8
    fit_logs = [h for h in trainer.state.log_history if "pseudo_sources/k" in h]
    assert len(fit_logs) == 1 and fit_logs[0]["step"] == 2
    assert fit_logs[0]["pseudo_sources/ari_vs_source"] == pytest.approx(1.0)
    assert fit_logs[0]["pseudo_sources/size/cluster_2"] == 10 and fit_logs[0]["pseudo_sources/small_clusters"] == 1
    assert any("coreset/selected/cluster_2" in h for h in trainer.state.log_history)


def test_the_source_column_is_never_used_for_selection(tmp_path):
    ds = mixture(SIZES)
    hidden = ds.remove_columns(["source"])
    runs = {}
    for name, data in (("labelled", ds), ("hidden", hidden)):
        trainer = make(tmp_path / name, data, max_steps=4)
        trainer.train()
        runs[name] = trainer
    assert [r["selected_ids"] for r in selections(tmp_path / "labelled")] == \
        [r["selected_ids"] for r in selections(tmp_path / "hidden")]
    assert torch.equal(runs["labelled"].pseudo_sources.state.assignment, runs["hidden"].pseudo_sources.state.assignment)
    # the ARI against the column is reported only where there is one
    assert "ari_vs_source" in runs["labelled"].pseudo_sources.summary()
    assert "ari_vs_source" not in runs["hidden"].pseudo_sources.summary()


@pytest.mark.parametrize("stop_at", [1, 3], ids=["inside_warm_up", "after_the_fit"])
def test_resume_equals_uninterrupted(tmp_path, stop_at):
    ds = mixture(SIZES)
    save = dict(save_strategy="steps", save_steps=stop_at)
    full = make(tmp_path / "full", ds, **save)
    full.train()
    part = make(tmp_path / "part", ds, callbacks=[StopAfter(stop_at)], **save)
    part.train()
    checkpoint = tmp_path / "part" / f"checkpoint-{stop_at}"
    assert (checkpoint / SELECTOR_STATE_FILE).is_file()
    assert (checkpoint / STATE_FILE).is_file() == (stop_at > 2)  # the file exists once fitted
    resumed = make(tmp_path / "part", ds, **save)
    resumed.train(resume_from_checkpoint=True)
    # restored, not refitted with the resumed weights: fitted before step 3 in both runs
    assert resumed.pseudo_sources.state.fitted_at_step == full.pseudo_sources.state.fitted_at_step == 2
    assert torch.equal(resumed.pseudo_sources.state.assignment, full.pseudo_sources.state.assignment)
    torch.testing.assert_close(resumed.pseudo_sources.state.centroids, full.pseudo_sources.state.centroids)
    logs = [[r["selected_ids"] for r in selections(tmp_path / d)] for d in ("full", "part")]
    assert logs[0] == logs[1] and len(logs[0]) == 6
    for (name, p1), p2 in zip(full.model.named_parameters(), resumed.model.parameters()):
        torch.testing.assert_close(p1, p2, rtol=1e-5, atol=1e-6, msg=name)


def test_a_checkpoint_after_the_fit_without_its_pseudo_sources_is_refused(tmp_path):
    ds = mixture(SIZES)
    make(tmp_path, ds, max_steps=3, save_strategy="steps", save_steps=3).train()
    (tmp_path / "checkpoint-3" / STATE_FILE).unlink()
    with pytest.raises(CheckpointError, match=f"has no {STATE_FILE}.*step 3 is past the fit"):
        make(tmp_path, ds).train(resume_from_checkpoint=True)


def test_bad_settings_are_refused(tmp_path):
    for value in (0, 1, -3, True, "many", 2.5):
        with pytest.raises(ValueError, match="CoresetConfig.pseudo_sources = .* expected None, 'auto' or an integer >= 2"):
            CoresetConfig(pseudo_sources=value)
    with pytest.raises(ValueError, match="pseudo_source_warmup_steps = -1 .* expected an integer >= 0"):
        CoresetConfig(pseudo_sources=3, pseudo_source_warmup_steps=-1)
    with pytest.raises(ValueError, match="small_sources = \\['rare'\\] .* replace the named sources"):
        CoresetConfig(pseudo_sources=3, small_sources=["rare"])
    ds = mixture(SIZES)
    with pytest.raises(ValueError, match="121 clusters, but train_dataset has only 120 rows"):
        make(tmp_path, ds, config=CoresetConfig(pool_factor=2, pseudo_sources=121, within_source="facility_location", feature="zo"))
    with pytest.raises(ValueError, match="source_sizes and CoresetConfig.pseudo_sources exclude each other"):
        CoresetTrainer(model=tiny_llama(), args=training_args(tmp_path), train_dataset=ds, data_collator=collator(),
                       coreset_config=CoresetConfig(**PSEUDO), source_sizes=SIZES)
    with pytest.raises(ValueError, match="pseudo_sources needs a train_dataset with len"):
        CoresetTrainer(model=tiny_llama(), args=training_args(tmp_path), train_dataset=ds.to_iterable_dataset(),
                       data_collator=collator(), coreset_config=CoresetConfig(**PSEUDO))
