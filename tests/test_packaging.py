"""The built wheel works outside the clone: built from a copy of the tree, installed into a fresh
venv, `colm --help` and one tiny `colm train` run from the installed package (not from src/).

The fresh venv reuses the test interpreter's installed dependencies (torch, transformers, ...)
through a .pth file rather than downloading them: the test machines are offline. (`venv
--system-site-packages` would not do: the test interpreter is itself a venv, whose "system" is
the bare base Python.)"""
from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(cmd, **kw):
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600, **kw)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.packaging
def test_wheel_installs_into_a_fresh_venv_and_trains(tmp_path):
    tree = tmp_path / "tree"  # a copy, so the build leaves no build/ or egg-info in the clone
    shutil.copytree(ROOT / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, tree / name)
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
         "-w", tmp_path / "dist", tree])
    wheels = list((tmp_path / "dist").glob("colm-*.whl"))
    assert len(wheels) == 1

    venv = tmp_path / "venv"
    # without pip (and the old setuptools venv would bundle, which would shadow the one torch needs):
    # the test interpreter's pip installs into it with --python
    run([sys.executable, "-m", "venv", "--without-pip", venv])
    python, colm = venv / "bin" / "python", venv / "bin" / "colm"
    fresh_site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    (fresh_site / "reuse_test_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1", COLM_CACHE=str(tmp_path / "cache"))
    # --no-index: every dependency must already be satisfied (through the .pth), nothing downloaded
    run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-index", wheels[0]], env=env)

    where = run([python, "-c", "import colm; print(colm.__file__)"], env=env, cwd=tmp_path).stdout.strip()
    assert where.startswith(str(fresh_site)), where  # the installed wheel, not the clone's src/
    assert "train" in run([colm, "--help"], env=env, cwd=tmp_path).stdout

    rows = [{"source": s, "prompt": f"{i}+{i}?", "completion": f"{2 * i}"} for s in ("a", "b") for i in range(4)]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    run([colm, "train", "--data", data, "--output-dir", out, "--max-steps", "1",
         "--per-device-train-batch-size", "2", "--save-strategy", "no"], env=env, cwd=tmp_path)
    assert json.loads((out / "report.json").read_text())["data"]["train"]["per_source"] == {"a": 4, "b": 4}
