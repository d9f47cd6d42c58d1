"""The Python API after the fourth red team (issue 28)."""
from __future__ import annotations

import pytest
from trainer_helpers import collator, mixture, tiny_llama, training_args

from colm import CoresetConfig, CoresetTrainer

SIZES = {"big_a": 30, "big_b": 20, "rare": 6}


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
