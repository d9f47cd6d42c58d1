"""CoresetTrainer (Python API) under bad input: a kill mid-save, a damaged checkpoint file, a pool
larger than the training set, a coreset_config of the wrong type or field."""
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


def trainer_with(config, tmp_path):
    return CoresetTrainer(model=tiny_llama(), args=training_args(tmp_path, max_steps=1),
                          train_dataset=mixture(SIZES), data_collator=collator(), coreset_config=config)


def test_a_coreset_config_given_as_a_dict_is_taken(tmp_path):
    trainer = trainer_with({"pool_factor": 2, "within_source": "random"}, tmp_path)
    assert trainer.coreset_config.pool_factor == 2 and trainer.coreset_config.within_source == "random"


def test_a_coreset_config_of_another_type_or_field_is_one_clear_error(tmp_path):
    with pytest.raises(TypeError, match="coreset_config: expected a CoresetConfig, a dict of its fields or None"):
        trainer_with(["pool_factor", 2], tmp_path)
    with pytest.raises(ValueError, match="pool_facter"):
        trainer_with({"pool_facter": 2}, tmp_path)


def test_a_damaged_checkpoint_file_is_named_by_the_python_api(tmp_path):
    from colm.errors import CheckpointError

    trainer = trainer_with(CoresetConfig(pool_factor=2, within_source="random"), tmp_path)
    trainer.args.save_strategy = "steps"
    trainer.args.save_steps = 1
    trainer.train()
    weights = tmp_path / "checkpoint-1" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"checkpoint-1/model.safetensors: .*cut short or corrupted|"
                                              r"damaged checkpoint file.*model.safetensors"):
        trainer_with(CoresetConfig(pool_factor=2, within_source="random"), tmp_path).train(
            resume_from_checkpoint=True)
