"""CoresetTrainer (Python API) under a kill mid-save and a pool larger than the training set."""
from __future__ import annotations

import logging

import pytest
from trainer_helpers import collator, mixture, tiny_llama, training_args

from colm import CoresetConfig, CoresetTrainer

SIZES = {"big_a": 30, "big_b": 20, "rare": 6}


def make(out, max_steps, dataset=None, **overrides):
    return CoresetTrainer(
        model=tiny_llama(), args=training_args(out, max_steps=max_steps, **overrides),
        train_dataset=dataset if dataset is not None else mixture(SIZES), data_collator=collator(),
        coreset_config=CoresetConfig(pool_factor=2, zo_probes=1, within_source="facility_location", feature="zo"),
    )


def test_resume_true_skips_a_checkpoint_torn_by_a_kill(tmp_path, caplog):
    make(tmp_path, 4, save_strategy="steps", save_steps=2).train()
    # killed while writing checkpoint-4: the Trainer writes trainer_state.json last
    (tmp_path / "checkpoint-4" / "trainer_state.json").unlink()
    resumed = make(tmp_path, 4, save_strategy="steps", save_steps=2)
    with caplog.at_level(logging.WARNING, logger="colm.integrations.checkpoints"):
        resumed.train(resume_from_checkpoint=True)
    assert any("checkpoint-2" in r.message and "checkpoint-4" in r.message for r in caplog.records)
    # steps 3 and 4 were trained again from checkpoint-2, and checkpoint-4 is complete now
    assert [h["step"] for h in resumed.state.log_history if "loss" in h] == [1, 2, 3, 4]
    assert (tmp_path / "checkpoint-4" / "trainer_state.json").is_file()


def test_resume_from_a_torn_trainer_state_names_the_file(tmp_path):
    make(tmp_path, 2, save_strategy="steps", save_steps=2).train()
    state = tmp_path / "checkpoint-2" / "trainer_state.json"
    state.write_text('{"global_step": 2, "lo', encoding="utf-8")
    with pytest.raises(ValueError, match="trainer_state.json: not valid JSON"):
        make(tmp_path, 4).train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    with pytest.raises(ValueError, match="no complete checkpoint"):
        make(tmp_path, 4).train(resume_from_checkpoint=True)


def test_a_pool_larger_than_the_training_set_is_refused(tmp_path):
    # pool = 2 x 4 x 2 = 16 > 10 examples: every step would have trained on ~5 instead of 8
    trainer = make(tmp_path, 2, dataset=mixture({"a": 6, "b": 4}))
    with pytest.raises(ValueError, match=r"16 examples\) is larger than the training set \(10 examples\)"):
        trainer.train()
