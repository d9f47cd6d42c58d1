"""CoresetTrainer on streamed training sets (datasets.IterableDataset, a plain iterable): the
source sizes come from `source_sizes=`, each step trains exactly the coreset of its pool (rows
numbered by stream position), resume is exact, and what cannot work is a clear error."""
from __future__ import annotations

import json

import pytest
import torch
from datasets import IterableDataset
from trainer_helpers import collator, mixture, tiny_llama, training_args
from transformers import TrainerCallback

from colm import CoresetConfig, CoresetTrainer
from colm.integrations.trainer import SELECTIONS_FILE

SIZES = {"big_a": 60, "big_b": 50, "rare": 10}
ROWS = mixture(SIZES).to_list()


class Rows:
    """A plain iterable of dict rows: no len(), no indexing, and a new pass at every iter()."""

    def __iter__(self):
        return iter(ROWS)


def stream() -> IterableDataset:
    return IterableDataset.from_generator(lambda: iter(ROWS))


class Recorded(CoresetTrainer):
    def training_step(self, model, inputs, num_items_in_batch=None):
        self.seen = getattr(self, "seen", [])
        self.seen.append((self.state.global_step, inputs["input_ids"].clone(), inputs["attention_mask"].clone()))
        return super().training_step(model, inputs, num_items_in_batch)


def make(out_dir, dataset, cls=CoresetTrainer, source_sizes=SIZES, **overrides):
    return cls(
        model=tiny_llama(), args=training_args(out_dir, **overrides), train_dataset=dataset,
        data_collator=collator(), coreset_config=CoresetConfig(pool_factor=2, zo_probes=2, within_source="facility_location", feature="zo"),
        source_sizes=source_sizes, log_selections=True,
    )


def selections(out_dir) -> list[dict]:
    return [json.loads(line) for line in open(out_dir / SELECTIONS_FILE)]


@pytest.mark.parametrize("dataset", [stream, Rows], ids=["datasets.IterableDataset", "plain iterable"])
def test_a_stream_trains_exactly_the_selected_rows(tmp_path, dataset):
    trainer = make(tmp_path, dataset(), cls=Recorded)
    trainer.train()
    assert trainer.state.global_step == 6
    records = selections(tmp_path)
    # pools are consecutive chunks of the stream: ids are stream positions, in order
    assert [r["pool_ids"] for r in records] == [list(range(16 * k, 16 * k + 16)) for k in range(6)]
    assert sum(r["pool_sources"].get("rare", 0) for r in records) > 0
    for step, rec in enumerate(records):
        assert len(rec["selected_ids"]) == 8 and set(rec["selected_ids"]) <= set(rec["pool_ids"])
        assert rec["selected_sources"].count("rare") == rec["pool_sources"].get("rare", 0)
        trained = sorted(tuple(ids[m.bool()].tolist()) for s, b, bm in trainer.seen if s == step for ids, m in zip(b, bm))
        assert trained == sorted(tuple(ROWS[i]["input_ids"]) for i in rec["selected_ids"])


def test_a_stream_shorter_than_the_run_is_read_again(tmp_path, caplog):
    # 120 rows = 7 pools of 16 + 8 rows, less than a step's two micro-batch chunks: those 8 are
    # left out (not trained without an optimizer step), and step 8 starts a second pass
    trainer = make(tmp_path, stream(), max_steps=9)
    trainer.train()
    assert trainer.state.global_step == 9
    records = selections(tmp_path)
    assert [r["step"] for r in records] == list(range(1, 10))
    assert [r["pool_ids"][0] for r in records] == [0, 16, 32, 48, 64, 80, 96, 0, 16]
    assert "the stream ended 1 micro-batch pool chunk(s) into an optimizer step" in caplog.text


def test_a_stream_resumes_exactly(tmp_path):
    full = make(tmp_path / "full", stream(), save_strategy="steps", save_steps=3)
    full.train()

    class StopAt3(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            control.should_training_stop = state.global_step >= 3

    part = make(tmp_path / "part", stream(), save_strategy="steps", save_steps=3)
    part.add_callback(StopAt3())
    part.train()
    resumed = make(tmp_path / "part", stream(), save_strategy="steps", save_steps=3)
    resumed.train(resume_from_checkpoint=True)
    assert [r["selected_ids"] for r in selections(tmp_path / "part")] == \
        [r["selected_ids"] for r in selections(tmp_path / "full")]
    for (name, p1), (_, p2) in zip(full.model.named_parameters(), resumed.model.named_parameters()):
        torch.testing.assert_close(p1, p2, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("dataset", [stream, Rows], ids=["datasets.IterableDataset", "plain iterable"])
def test_a_stream_without_source_sizes_is_refused(tmp_path, dataset):
    with pytest.raises(ValueError, match=r"stream \(it has no len\(\)\).*pass source_sizes="):
        make(tmp_path, dataset(), source_sizes=None)


def test_bad_source_sizes_and_unknown_sources_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"source_sizes\['rare'\] must be an integer >= 1, got 0"):
        make(tmp_path, stream(), source_sizes={**SIZES, "rare": 0})
    trainer = make(tmp_path, stream(), source_sizes={"big_a": 60, "big_b": 50})
    with pytest.raises(ValueError, match=r"source 'rare' is not in source_sizes"):
        trainer.train()


def test_a_generator_read_once_is_refused_on_its_second_pass(tmp_path):
    trainer = make(tmp_path, (row for row in ROWS), max_steps=9)
    with pytest.raises(ValueError, match="can be read only once"):
        trainer.train()


def test_a_stream_needs_max_steps(tmp_path):
    with pytest.raises(ValueError, match="max_steps"):
        make(tmp_path, stream(), max_steps=-1, num_train_epochs=1)


def test_source_sizes_replace_counting_for_a_sized_dataset(tmp_path):
    # 'big_b' declared rare: below the mean of the given sizes, so it is kept whole
    trainer = make(tmp_path, mixture(SIZES), source_sizes={"big_a": 600, "big_b": 50, "rare": 10}, max_steps=2)
    assert trainer.selector.small_source_names == ["big_b", "rare"]
    trainer.train()
    checked = 0
    for rec in selections(tmp_path):
        small = rec["pool_sources"].get("big_b", 0) + rec["pool_sources"].get("rare", 0)
        if small <= 8:  # small sources fit the budget: all kept
            checked += 1
            assert rec["selected_sources"].count("big_b") == rec["pool_sources"].get("big_b", 0)
    assert checked


def test_a_collator_that_merges_rows_is_refused(tmp_path):
    inner = collator()

    def flattening(features):  # padding-free style: the micro-batch as one sequence
        batch = inner(features)
        keep = batch["attention_mask"].bool()
        return {"input_ids": batch["input_ids"][keep][None], "labels": batch["labels"][keep][None],
                "attention_mask": torch.ones(1, int(keep.sum()), dtype=torch.long)}

    trainer = CoresetTrainer(
        model=tiny_llama(), args=training_args(tmp_path, max_steps=1), train_dataset=mixture(SIZES),
        data_collator=flattening, coreset_config=CoresetConfig(pool_factor=2, within_source="facility_location", feature="zo"),
    )
    with pytest.raises(ValueError, match=r"collator returned 1 row\(s\) for 16 examples"):
        trainer.train()
