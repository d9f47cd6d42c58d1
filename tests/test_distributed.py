"""Two CPU processes (gloo) under torchrun and under `accelerate launch`: every rank selects the
same coreset and the model replicas end identical; a launch the Trainer does not see as
distributed stops with an error naming the fix."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("ddp_worker.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
# On a CPU machine accelerate starts several processes through its multi-GPU launcher; the
# script's use_cpu=True then selects its CPU data-parallel mode (gloo), as docs/trainer.md says.
ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", "0"]


VARIANTS = ("zo", "exact", "random-example", "stream", "pseudo")
# FSDP2 cases (tests/fsdp_worker.py), run in the same launch after the Trainer variants
FSDP_VARIANTS = ("fsdp-features", "fsdp-train", "fsdp-trainer-cpu")


@pytest.fixture(scope="module")
def torchrun_runs(tmp_path_factory):
    """One torchrun launch of 2 ranks training every variant in turn (starting the processes is
    most of a launch's time)."""
    out = tmp_path_factory.mktemp("ddp")
    proc = subprocess.run([*TORCHRUN, str(WORKER), str(out), ",".join(VARIANTS + FSDP_VARIANTS)], env=ENV,
                          capture_output=True, text=True, timeout=600)
    return out, proc


@pytest.mark.multiprocess
@pytest.mark.parametrize("feature", VARIANTS)
def test_two_ranks_agree(torchrun_runs, feature):
    out, proc = torchrun_runs
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    check_results(out / feature, feature)


@pytest.mark.multiprocess
def test_accelerate_launch_two_ranks_agree(tmp_path):
    proc = subprocess.run([*ACCELERATE, str(WORKER), str(tmp_path), "zo"], env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    check_results(tmp_path, "zo")


@pytest.mark.multiprocess
def test_launch_the_trainer_cannot_see_is_refused(tmp_path):
    # torchrun's two gloo ranks, but TrainingArguments without use_cpu: transformers trains in
    # single-process mode while colm's exchanges see two ranks (duplicated pools, two models)
    proc = subprocess.run([*TORCHRUN, str(WORKER), str(tmp_path), "no-use-cpu"], env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "the launcher started 2 process(es) (torch.distributed) but the Trainer trains with 1" in proc.stderr
    assert "use_cpu=True" in proc.stderr
    assert not list(tmp_path.glob("rank*.json")) and not list(tmp_path.glob("checkpoint-*"))


def check_results(tmp_path, feature):
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0["world"] == r1["world"] == 2
    assert r0["steps"] == r1["steps"] == 4
    assert len(r0["selections"]) == 4
    # global pool 2 ranks x 2 micro-batches x 2 x pool_factor 2 = 16; coreset 8
    assert all(len(s) == 8 for s in r0["selections"])
    assert r0["selections"] == r1["selections"]
    assert r0["weights_sha256"] == r1["weights_sha256"]
    if feature == "pseudo":
        # each rank embedded half of the rows: every row got its own vector (the clusters are
        # exactly the sources), and both ranks hold the same assignment and centroids
        from colm.integrations.pseudo_sources import adjusted_rand_index

        p0, p1 = r0["pseudo_sources"], r1["pseudo_sources"]
        assert p0["assignment"] == p1["assignment"] and p0["centroids"] == p1["centroids"]
        assert adjusted_rand_index(p0["assignment"], p0["sources"]) == 1.0
    if feature == "stream":
        # the ranks read different rows of the stream: 4 pools of 16 distinct consecutive rows
        pools = [json.loads(line)["pool_ids"] for line in open(tmp_path / "selections.jsonl")]
        assert [sorted(p) for p in pools] == [list(range(16 * k, 16 * k + 16)) for k in range(4)]


@pytest.mark.multiprocess
def test_colm_train_under_torchrun_without_use_cpu_is_a_usage_error(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([*TORCHRUN, "-m", "colm.cli", "train", "--output-dir", str(out), "--max-steps", "2"],
                          env={**ENV, "COLM_CACHE": str(tmp_path / "cache")}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("colm train: error:")]
    assert len(errors) == 2, proc.stderr[-3000:]  # one line from each rank
    assert all("--use-cpu true" in line and "started 2 process(es)" in line for line in errors)
    assert not out.exists()


def fsdp_results(torchrun_runs, variant):
    out, proc = torchrun_runs
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((out / variant / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world"] == 2 for r in ranks)
    return ranks


@pytest.mark.multiprocess
@pytest.mark.parametrize("feature", ("zo", "exact", "hidden"))
def test_fsdp2_features_and_selections_equal_the_unsharded_models(torchrun_runs, feature):
    # Each rank scores its half of a 16-row pool on a model sharded with fully_shard (per decoder
    # layer, then the root) and gathers the features; an unsharded copy scores the same halves.
    # Tolerance 1e-5 of the features' scale (the full weights are exact copies: 0.0 was measured).
    for rank in fsdp_results(torchrun_runs, "fsdp-features"):
        entry = rank[feature]
        for step in ("0", "1"):
            f = entry["features"][step]
            # zo/exact: 512 = the last layer's v_proj, whole (not a shard); hidden: the hidden size
            assert f["shape"] == [16, entry["hidden_size"] if feature == "hidden" else 512]
            assert f["scale"] > 0.1 and f["max_abs_diff"] <= 1e-5 * f["scale"], f
            assert entry["selections"][step]["sharded"] == entry["selections"][step]["unsharded"]
        assert entry["unchanged"]  # the sharded model's full parameters bit-identical after scoring


@pytest.mark.multiprocess
@pytest.mark.parametrize("feature", ("zo", "exact"))
def test_fsdp2_scoring_gathers_one_block_at_a_time(torchrun_runs, feature):
    # Every all-gather FSDP made during a scoring pass (FSDPParamGroup.unshard, patched): each
    # decoder block exactly once, as in one forward (the replays of the last block add none),
    # never while another block is gathered; the root (embeddings, norm, head) at most once.
    for rank in fsdp_results(torchrun_runs, "fsdp-features"):
        layers = rank[feature]["layers"]
        for events in rank[feature]["gathers"]:
            blocks = [e["module"] for e in events if e["module"]]
            assert blocks == [f"model.layers.{i}" for i in range(layers)], events
            assert all(e["other_blocks_gathered"] == [] for e in events), events
            assert [e["module"] for e in events].count("") <= 1


@pytest.mark.multiprocess
@pytest.mark.parametrize("method", ("random", "zo"))
def test_fsdp2_training_steps_agree_with_ddp(torchrun_runs, method):
    # The plain-loop recipe for 3 steps from the same initial model, once sharded with
    # fully_shard and once wrapped in DDP: same coresets, same per-rank losses, same weights
    # (measured: identical; tolerance 1e-6 for reduction-order differences).
    for rank in fsdp_results(torchrun_runs, "fsdp-train"):
        run = rank[method]
        assert run["fsdp"]["selections"] == run["ddp"]["selections"]
        assert len(run["fsdp"]["losses"]) == 3
        for a, b in zip(run["fsdp"]["losses"], run["ddp"]["losses"]):
            assert abs(a - b) <= 1e-6 * abs(b)
        assert run["max_param_diff"] <= 1e-6
        assert run["fsdp"]["losses"][-1] < run["fsdp"]["losses"][0]  # it did train


@pytest.mark.multiprocess
def test_fsdp2_through_the_trainer_on_cpu_is_refused_not_silently_ddp(torchrun_runs):
    # TrainingArguments(fsdp=True, fsdp_config={"fsdp_version": 2}) under 2 gloo ranks: accelerate
    # runs FSDP only on accelerators and would train plain DDP; CoresetTrainer refuses instead.
    for rank in fsdp_results(torchrun_runs, "fsdp-trainer-cpu"):
        assert rank["error"] == "ShardingNotSupportedError"
        assert "FSDP2 was asked for but accelerate does not run FSDP on cpu" in rank["message"]
        assert "fully_shard in your own training loop" in rank["message"]
