"""The Python API reports what the CLI reports: CoresetTrainer.evaluate() (and the TRL trainer's)
returns and logs per-source, natural-mixture, mean and worst losses, under the CLI's names."""
from __future__ import annotations

import logging
import math

import pytest
import torch
from trainer_helpers import collator, mixture, tiny_llama, training_args

from colm import CoresetConfig, CoresetTrainer
from colm.evaluation import per_source_loss

SIZES = {"big_a": 30, "big_b": 20, "rare": 6}


def test_evaluate_returns_and_logs_per_source_losses_equal_to_colm_evaluation(tmp_path):
    train, valid = mixture(SIZES, seed=0), mixture({"big_a": 5, "big_b": 4, "rare": 3}, seed=1)
    trainer = CoresetTrainer(model=tiny_llama(), args=training_args(tmp_path, max_steps=2), train_dataset=train,
                             eval_dataset=valid, data_collator=collator(), coreset_config=CoresetConfig())
    trainer.train()
    got = trainer.evaluate()
    want = per_source_loss(trainer.model, valid, pad_token_id=0, batch_size=4)
    for source, loss in want["per_source"].items():
        assert math.isclose(got[f"eval_loss/{source}"], loss, rel_tol=1e-5)
    assert math.isclose(got["eval_loss_mean"], want["mean"], rel_tol=1e-5)
    assert math.isclose(got["eval_loss_worst"], want["worst"], rel_tol=1e-5)
    shares = {s: n / sum(SIZES.values()) for s, n in SIZES.items()}
    natural = sum(shares[s] * v for s, v in want["per_source"].items())
    assert math.isclose(got["eval_loss_natural"], natural, rel_tol=1e-5)
    assert "eval_loss" in got  # the Trainer's own number stays
    logged = trainer.state.log_history[-1]
    assert logged["eval_loss_mean"] == got["eval_loss_mean"] and "eval_loss/rare" in logged


def test_a_source_column_by_another_name(tmp_path):
    train = mixture(SIZES).rename_column("source", "task")
    trainer = CoresetTrainer(model=tiny_llama(), args=training_args(tmp_path, max_steps=1), train_dataset=train,
                             eval_dataset=mixture({"rare": 3}, seed=1).rename_column("source", "task"),
                             data_collator=collator(), coreset_config=CoresetConfig(), source_column="task")
    assert list(trainer.selector.source_sizes) == list(dict.fromkeys(train["task"]))
    assert "eval_loss/rare" in trainer.evaluate()
    with pytest.raises(ValueError, match=r"source_column='topic': train_dataset has no such column; its columns"):
        CoresetTrainer(model=tiny_llama(), args=training_args(tmp_path), train_dataset=train,
                       data_collator=collator(), coreset_config=CoresetConfig(), source_column="topic")


def test_leaving_out_coreset_config_and_the_source_column_are_warned(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="colm.integrations.trainer"):
        CoresetTrainer(model=tiny_llama(), args=training_args(tmp_path), train_dataset=mixture(SIZES),
                       data_collator=collator())
    assert "without coreset_config trains with no selection" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="colm.integrations.trainer"):
        CoresetTrainer(model=tiny_llama(), args=training_args(tmp_path), data_collator=collator(),
                       train_dataset=mixture(SIZES).rename_column("source", "task"), coreset_config=CoresetConfig())
    assert "(its columns: input_ids, labels, task)" in caplog.text and "source_column=" in caplog.text


def test_the_trl_trainer_reports_per_source_losses_too(tmp_path):
    pytest.importorskip("trl")
    from test_sft import char_tokenizer, rows, sft_args

    from colm import CoresetSFTTrainer

    torch.manual_seed(0)
    trainer = CoresetSFTTrainer(model=tiny_llama(), args=sft_args(tmp_path, max_steps=1), train_dataset=rows(),
                                eval_dataset=rows(seed=1).select(range(12)), processing_class=char_tokenizer(),
                                coreset_config=CoresetConfig())
    got = trainer.evaluate()
    assert {"eval_loss_mean", "eval_loss_worst", "eval_loss_natural"} <= set(got)
    assert any(key.startswith("eval_loss/") for key in got)


def test_step_logs_leave_out_what_cannot_change_under_the_method(tmp_path):
    cfg = CoresetConfig(within_source="random", small_sources="none")  # no scoring, nothing kept whole
    trainer = CoresetTrainer(model=tiny_llama(), args=training_args(tmp_path, max_steps=2), train_dataset=mixture(SIZES),
                             data_collator=collator(), coreset_config=cfg)
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert logged and all("coreset/select_ms" in h for h in logged)
    for key in ("coreset/score_ms", "coreset/adam_step", "coreset/kept_small", "coreset/dropped_small"):
        assert not any(key in h for h in logged), key
