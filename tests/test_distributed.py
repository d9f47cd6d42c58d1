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


@pytest.fixture(scope="module")
def torchrun_runs(tmp_path_factory):
    """One torchrun launch of 2 ranks training every variant in turn (starting the processes is
    most of a launch's time)."""
    out = tmp_path_factory.mktemp("ddp")
    proc = subprocess.run([*TORCHRUN, str(WORKER), str(out), ",".join(VARIANTS)], env=ENV,
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
