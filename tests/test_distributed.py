"""Two CPU processes (gloo) under torchrun: every rank selects the same coreset and the model
replicas end identical."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.multiprocess
@pytest.mark.parametrize("feature", ["zo", "exact", "random-example"])
def test_two_ranks_agree(tmp_path, feature):
    worker = Path(__file__).with_name("ddp_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(worker), str(tmp_path), feature]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0["world"] == r1["world"] == 2
    assert r0["steps"] == r1["steps"] == 4
    assert len(r0["selections"]) == 4
    # global pool 2 ranks x 2 micro-batches x 2 x pool_factor 2 = 16; coreset 8
    assert all(len(s) == 8 for s in r0["selections"])
    assert r0["selections"] == r1["selections"]
    assert r0["weights_sha256"] == r1["weights_sha256"]
