"""The gradient noise scale: the estimators' algebra against brute force, a problem with a
known B_simple (linear regression), and the Trainer callback (plain Trainer, CoresetTrainer
with accumulation and with the split, resume, 2-process DDP)."""
from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from colm.diagnostics.noise_scale import (
    NoiseScaleEMA,
    effective_batch,
    per_example_estimates,
    regime,
    two_size_estimates,
)


def toy_per_example_grads(n: int = 5, d: int = 3, seed: int = 0) -> torch.Tensor:
    """Per-example gradients of a toy least-squares model at a fixed point, [n, d] (float64)."""
    g = torch.Generator().manual_seed(seed)
    x, y, w = torch.randn(n, d, generator=g), torch.randn(n, generator=g), torch.randn(d, generator=g)
    return (x * (x @ w - y)[:, None]).double()  # d/dw of (x.w - y)^2 / 2, per example


def population_truth(grads: torch.Tensor) -> tuple[float, float]:
    mean = grads.mean(0)
    return float(mean.square().sum()), float(((grads - mean) ** 2).sum(1).mean())


def test_two_size_estimates_are_unbiased_over_every_draw():
    # every ordered draw (with replacement) of 4 examples: small = the first 2, big = all 4;
    # the exact expectation of both estimates is the population's |G|^2 and tr(Sigma)
    grads = toy_per_example_grads()
    true_g2, true_trace = population_truth(grads)
    sums = [0.0, 0.0]
    draws = list(itertools.product(range(len(grads)), repeat=4))
    for draw in draws:
        rows = grads[list(draw)]
        g2, trace = two_size_estimates(2, float(rows[:2].mean(0).square().sum()), 4, float(rows.mean(0).square().sum()))
        sums[0] += g2
        sums[1] += trace
    assert sums[0] / len(draws) == pytest.approx(true_g2, rel=1e-9)
    assert sums[1] / len(draws) == pytest.approx(true_trace, rel=1e-9)
    # and one draw's estimate is not the truth (the check above is not vacuous)
    assert two_size_estimates(2, 1.0, 4, 0.5) != pytest.approx((true_g2, true_trace))


def test_per_example_estimates_are_unbiased_over_every_draw():
    grads = toy_per_example_grads(n=4, d=2, seed=1)
    true_g2, true_trace = population_truth(grads)
    draws = list(itertools.product(range(len(grads)), repeat=3))
    est = [per_example_estimates(grads[list(d)]) for d in draws]
    assert sum(e[0] for e in est) / len(draws) == pytest.approx(true_g2, rel=1e-9)
    assert sum(e[1] for e in est) / len(draws) == pytest.approx(true_trace, rel=1e-9)


def test_effective_batch_of_unequal_shares():
    # equal shares of equal micro-batches: the plain sum of sizes
    assert effective_batch([0.5, 0.5], [8, 8]) == pytest.approx(16)
    # Var(w1 G1 + w2 G2) = S (w1^2/b1 + w2^2/b2): 0.25/4 + 0.5625/12 -> 1/0.109375
    assert effective_batch([0.25, 0.75], [4, 12]) == pytest.approx(1 / (0.0625 / 4 + 0.5625 / 12))


def test_ema_averages_numerator_and_denominator_not_the_ratio():
    ema = NoiseScaleEMA(beta=0.5)
    assert math.isnan(ema.b_simple)
    ema.update(1.0, 10.0)
    ema.update(3.0, 10.0)
    # bias-corrected means: g2 = (0.5*1 + 1*3)/1.5, trace = 10
    assert ema.g2_mean == pytest.approx(3.5 / 1.5)
    assert ema.b_simple == pytest.approx(10 / (3.5 / 1.5))
    assert ema.b_simple != pytest.approx((10 / 1 * 0.5 + 10 / 3) / 1.5)  # not the averaged ratio
    restored = NoiseScaleEMA()
    restored.load_state_dict(ema.state_dict())
    assert restored.b_simple == ema.b_simple and restored.count == 2


def test_regime_says_below_near_far_above():
    assert regime(100, 16) == "below"
    assert regime(16, 16) == "near"
    assert regime(4, 16) == "far above"


# ---- the callback on a problem with a known answer ----------------------------------------------
D, SIGMA = 10, 1.0


class LinearRegression(nn.Module):
    """y ~ x.w, loss = mean over the batch of (x.w - y)^2 / 2 (no loss kwargs: equal shares)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(D))

    def forward(self, x, y):
        return {"loss": 0.5 * (x @ self.w - y).square().mean()}


def regression_data(n: int = 20000, seed: int = 0):
    from datasets import Dataset

    g = torch.Generator().manual_seed(seed)
    w_star = torch.ones(D)
    x = torch.randn(n, D, generator=g)
    y = x @ w_star + SIGMA * torch.randn(n, generator=g)
    return Dataset.from_dict({"x": x.tolist(), "y": y.tolist()}), x, y


def true_b_simple(w: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """|G|^2 and tr(Sigma) over the whole training set at w, by brute force."""
    grads = (x * (x @ w - y)[:, None]).double()
    return population_truth(grads)


class WeightsAtMeasurement:
    def __init__(self):
        self.w = {}

    def callback(self):
        from transformers import TrainerCallback

        record = self.w

        class Record(TrainerCallback):
            def on_step_begin(self, args, state, control, model=None, **kwargs):
                record[state.global_step] = model.w.detach().clone()
        return Record()


def regression_trainer(tmp_path, steps, accumulation, every=1, lr=0.02, **kw):
    from transformers import Trainer, TrainingArguments

    data, x, y = regression_data()
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, gradient_accumulation_steps=accumulation,
        max_steps=steps, learning_rate=lr, optim="sgd", lr_scheduler_type="constant", max_grad_norm=0.0,
        logging_steps=5, save_strategy="no", report_to=[], use_cpu=True, seed=0, disable_tqdm=True,
        dataloader_num_workers=0, **kw,
    )
    torch.manual_seed(0)
    return Trainer(model=LinearRegression(), args=args, train_dataset=data), x, y


def test_linear_regression_estimate_is_within_ten_percent_of_the_truth(tmp_path):
    from colm.integrations.noise_scale import add_noise_scale

    trainer, x, y = regression_trainer(tmp_path, steps=300, accumulation=4, lr=0.005)
    weights = WeightsAtMeasurement()
    trainer.add_callback(weights.callback())
    callback = add_noise_scale(trainer, every=1)
    trainer.train()
    history = callback.history
    assert len(history) == 300 and {h["b_small"] for h in history} == {4.0} and {h["b_big"] for h in history} == {16.0}
    truth = [true_b_simple(weights.w[h["step"]], x, y) for h in history]
    # averaged over steps: the ratio of the averaged estimates against the ratio of the averaged truths
    estimated = sum(h["trace_step"] for h in history) / sum(h["grad_sq_step"] for h in history)
    true = sum(t[1] for t in truth) / sum(t[0] for t in truth)
    assert estimated == pytest.approx(true, rel=0.10)
    # B_simple grows as w approaches w* (|G|^2 shrinks, the label noise stays): the estimate follows
    assert truth[-1][1] / truth[-1][0] > 1.5 * truth[0][1] / truth[0][0]
    assert history[-1]["b_simple"] > 1.5 * history[5]["b_simple"]
    # and reaches every report_to backend through Trainer.log
    logged = [r for r in trainer.state.log_history if "noise_scale/b_simple" in r]
    assert logged and logged[-1]["noise_scale/batch"] == 16 and logged[-1]["noise_scale/measurements"] == 300


def test_the_callback_reads_the_first_micro_batch_and_the_accumulated_gradient(tmp_path):
    # lr 0: the weights stay put, so the brute-force gradients of the captured micro-batches
    # are the ones the step accumulated
    from colm.integrations.noise_scale import add_noise_scale

    trainer, _, _ = regression_trainer(tmp_path, steps=2, accumulation=3, lr=0.0)
    seen = []
    handle = trainer.model.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs), with_kwargs=True)
    callback = add_noise_scale(trainer, every=1)
    trainer.train()
    handle.remove()
    w = trainer.model.w.detach()
    for step, h in enumerate(callback.history):
        micro = seen[3 * step : 3 * step + 3]
        grads = [(m["x"] * (m["x"] @ w - m["y"])[:, None]).double() for m in micro]
        assert h["grad_sq_small"] == pytest.approx(float(grads[0].mean(0).square().sum()), rel=1e-5)
        assert h["grad_sq_big"] == pytest.approx(float(torch.cat(grads).mean(0).square().sum()), rel=1e-5)
        assert (h["b_small"], h["b_big"]) == (4.0, 12.0)


def test_one_process_without_accumulation_measures_nothing_unless_split(tmp_path, caplog):
    from colm.integrations.noise_scale import add_noise_scale

    trainer, _, _ = regression_trainer(tmp_path, steps=3, accumulation=1)
    callback = add_noise_scale(trainer, every=1)
    trainer.train()
    assert callback.history == [] and "nothing is measured" in caplog.text


# ---- CoresetTrainer -------------------------------------------------------------------------
SIZES = {"big": 60, "mid": 30, "rare": 6}


def coreset_trainer(out, accumulation, every=1, split=False, callbacks=(), **overrides):
    sys.path.insert(0, str(Path(__file__).parent))
    from trainer_helpers import collator, mixture, tiny_llama, training_args

    from colm import CoresetConfig, CoresetTrainer

    args = training_args(out, gradient_accumulation_steps=accumulation, **overrides)
    return CoresetTrainer(model=tiny_llama(), args=args, train_dataset=mixture(SIZES), data_collator=collator(),
                          coreset_config=CoresetConfig(pool_factor=2), callbacks=list(callbacks),
                          noise_scale_every=every, noise_scale_split=split)


def test_coreset_trainer_with_accumulation_logs_the_noise_scale(tmp_path):
    trainer = coreset_trainer(tmp_path, accumulation=2, every=2)
    trainer.train()
    history = trainer.noise_scale.history
    assert [h["step"] for h in history] == [0, 2, 4]
    # the model normalizes by the step's supervised tokens: the micro-batches' shares are their
    # token shares, and 4 + 4 rows count as one effective batch of at most 8
    assert all(h["b_small"] == 4 and 4 < h["b_big"] <= 8 for h in history)
    assert all(h["grad_sq_small"] > h["grad_sq_big"] > 0 for h in history)
    logged = [r for r in trainer.state.log_history if "noise_scale/b_simple" in r]
    assert logged and all(r["noise_scale/batch"] == 8 for r in logged)
    # the Trainer's own records are all still there (logging_steps=1: one per step)
    assert len([r for r in trainer.state.log_history if "loss" in r]) == 6


def test_split_measures_a_step_without_changing_its_gradient(tmp_path):
    # one process, no accumulation: the split trains the measured steps as two halves, whose
    # token-normalized gradients add up to the whole batch's, so the weights end as without it
    plain = coreset_trainer(tmp_path / "plain", accumulation=1, every=1, max_steps=3)
    plain.train()
    assert plain.noise_scale.history == []  # no split, no second batch size
    split = coreset_trainer(tmp_path / "split", accumulation=1, every=1, split=True, max_steps=3)
    split.train()
    history = split.noise_scale.history
    assert [h["step"] for h in history] == [0, 1, 2] and all(h["b_small"] == 2 for h in history)
    for a, b in zip(plain.model.parameters(), split.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert [r["loss"] for r in plain.state.log_history if "loss" in r] == pytest.approx(
        [r["loss"] for r in split.state.log_history if "loss" in r], rel=1e-5)


def test_resume_keeps_the_moving_averages(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from trainer_helpers import StopAfter

    whole = coreset_trainer(tmp_path / "whole", accumulation=2, max_steps=6)
    whole.train()
    out = tmp_path / "cut"
    first = coreset_trainer(out, accumulation=2, max_steps=6, save_strategy="steps", save_steps=3,
                            callbacks=[StopAfter(3)])
    first.train()
    resumed = coreset_trainer(out, accumulation=2, max_steps=6, save_strategy="steps", save_steps=3)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.noise_scale.ema.count == whole.noise_scale.ema.count == 6
    assert resumed.noise_scale.ema.b_simple == pytest.approx(whole.noise_scale.ema.b_simple, rel=1e-4)
    assert [h["step"] for h in resumed.noise_scale.history] == list(range(6))


@pytest.mark.parametrize("accumulation", [1, 2])
def test_measuring_changes_nothing_the_run_trains(tmp_path, accumulation):
    # The pretrained lab measures on every step of one arm and none of the others, and compares
    # runs across labs with and without it: the trained weights must not depend on it.
    def weights(every):
        trainer = coreset_trainer(tmp_path / f"e{every}", accumulation=accumulation, every=every, max_steps=3)
        trainer.train()
        return {k: v.detach().clone() for k, v in trainer.model.named_parameters()}

    measured, plain = weights(1), weights(0)
    assert all(torch.equal(measured[k], plain[k]) for k in plain)
    from trainer_helpers import tiny_llama

    start = dict(tiny_llama().named_parameters())
    assert not all(torch.equal(start[k], plain[k]) for k in plain)  # and the runs did train


def test_restoring_callback_states_keeps_our_callback_and_its_log_hook(tmp_path):
    # restore_callback_states_from_checkpoint=True makes the Trainer rebuild stateful callbacks
    # from their saved args: without care the rebuilt one has no log hook and is not the object
    # the trainer (and the caller) holds, so nothing after the resume would be logged or kept.
    sys.path.insert(0, str(Path(__file__).parent))
    from trainer_helpers import StopAfter

    out = tmp_path / "cut"
    kw = dict(accumulation=2, max_steps=6, save_strategy="steps", save_steps=3,
              restore_callback_states_from_checkpoint=True, logging_steps=1)
    coreset_trainer(out, callbacks=[StopAfter(3)], **kw).train()
    resumed = coreset_trainer(out, **kw)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.noise_scale in resumed.callback_handler.callbacks
    assert [h["step"] for h in resumed.noise_scale.history] == list(range(6))
    logged = [r["step"] for r in resumed.state.log_history if "noise_scale/b_simple" in r]
    assert max(logged) >= 4  # steps after the resume reached Trainer.log


@pytest.mark.multiprocess
def test_two_ranks_read_local_and_reduced_gradients(tmp_path):
    # torchrun, 2 CPU ranks (gloo): with no accumulation the callback reads each rank's own
    # gradient before DDP reduces it and the reduced one; with accumulation 2 the first
    # micro-batch and the local accumulated gradient; both ranks log the same averaged estimate
    worker = Path(__file__).with_name("noise_scale_ddp_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(worker), str(tmp_path)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for accumulation in (1, 2):
        ranks = [json.loads((tmp_path / f"ga{accumulation}" / f"rank{r}.json").read_text()) for r in (0, 1)]
        assert all(r["world"] == 2 and len(r["steps"]) == 3 for r in ranks)
        for rank in ranks:
            for step in rank["steps"]:
                assert step["read_small"] == pytest.approx(step["brute_small"], rel=1e-4)
                assert step["read_big"] == pytest.approx(step["brute_big"], rel=1e-4)
                assert step["read_small"] != pytest.approx(step["read_big"], rel=1e-3)
        b_simple = [[s["b_simple"] for s in r["steps"]] for r in ranks]
        assert b_simple[0] == pytest.approx(b_simple[1], rel=1e-9, nan_ok=True)
        if accumulation == 1:
            assert {s["b_small"] for s in ranks[0]["steps"]} == {2.0}
            assert {s["b_big"] for s in ranks[0]["steps"]} == {4.0}


def test_exact_features_give_a_second_estimate_labelled_as_theirs(tmp_path, monkeypatch):
    # selection with exact per-example gradient features: the pool's features are per-example
    # gradients of the last block's value projection; their estimate is logged apart
    from colm import CoresetConfig
    from colm.integrations import noise_scale as ns

    seen = []
    real = ns.per_example_estimates
    monkeypatch.setattr(ns, "per_example_estimates", lambda g: seen.append(g.shape) or real(g))
    trainer = coreset_trainer(tmp_path, accumulation=2, every=2, max_steps=4)
    trainer.coreset_config = CoresetConfig(pool_factor=2, within_source="mean_match", feature="exact",
                                           selection_seed=7)
    trainer.selector = None
    trainer.train()
    assert trainer.noise_scale.feature_ema.count == 2 and len(seen) == 2
    # only the rows scored: the large source's ("big"; mid and rare are below the mean size, kept
    # whole and not scored), out of a pool of 2 x 4 x 2 = 16 rows
    assert all(2 <= shape[0] < 16 for shape in seen)
    logged = [r for r in trainer.state.log_history if "noise_scale/feature_params_trace" in r]
    assert logged and all("noise_scale/b_simple" in r or "noise_scale/grad_sq" in r for r in logged)


def test_the_pretrained_script_records_the_noise_scale_of_random_b(tmp_path, monkeypatch):
    # benchmarks/pretrained.py --noise-scale-every: the runs carry B_simple per measured step,
    # which `benchmarks/noise_scale.py relation --pretrained` reads
    pytest.importorskip("gguf")
    sys.path.insert(0, str(Path(__file__).parent))
    from test_pretrained_script import load_script
    from tiny_gguf import write_tiny_llama

    monkeypatch.setenv("COLM_CACHE", str(tmp_path / "cache"))
    script = load_script()
    model = tmp_path / "tiny.gguf"
    write_tiny_llama(model)
    out = tmp_path / "results.json"
    code = script.main(["--toy", "--model", str(model), "--out", str(out), "--lora-r", "2", "--template", "chat",
                        "--max-length", "512", "--workdir", str(tmp_path / "work"), "--arms", "random_b,random_2b",
                        "--seeds", "0", "--noise-scale-every", "1"])
    assert code in (0, None)
    runs = {r["arm"]: r for r in json.loads(out.read_text())["runs"]}
    assert runs["random_b"]["noise_scale"]["mode"] == "split"
    assert runs["random_2b"]["noise_scale"]["mode"] == "accumulation"
    steps = runs["random_b"]["steps"] if "steps" in runs["random_b"] else None
    per_step = runs["random_b"]["noise_scale"]["per_step"]
    assert per_step and all(len(p) == 5 for p in per_step) and (steps is None or len(per_step) <= steps)
    # and the relation table reads them
    import argparse
    import importlib.util

    spec = importlib.util.spec_from_file_location("noise_scale_benchmark",
                                                  Path(__file__).parents[1] / "benchmarks" / "noise_scale.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.relation(argparse.Namespace(pretrained=out, every=1, lab=None, quality=[]))


def test_b_simple_is_undefined_while_an_average_is_not_positive():
    ema = NoiseScaleEMA()
    ema.update(-1.0, 5.0)
    assert math.isnan(ema.b_simple)
    ema = NoiseScaleEMA()
    ema.update(1.0, -5.0)
    assert math.isnan(ema.b_simple)


def test_pooled_b_simple_is_not_decided_by_one_spike():
    from colm.diagnostics.noise_scale import pooled_b_simple

    g2s, traces = [1.0] * 20, [50.0] * 20
    assert pooled_b_simple(g2s, traces) == pytest.approx(50.0)
    g2s[3], traces[3] = -500.0, 5000.0  # one step's spike: the plain ratio of means turns negative
    assert sum(traces) / sum(g2s) < 0
    assert pooled_b_simple(g2s, traces) == pytest.approx(50.0)
    assert pooled_b_simple([1.0, 3.0], [10.0, 10.0]) == pytest.approx(5.0)  # few: the plain means
