"""What the prepared GPU run (benchmarks/gpu/run.sh) carries to the device machine, and checks on it.

The device machine starts bare: its image has torch, transformers, peft, accelerate and numba
but not `datasets` or `gguf`, it reaches no package registry, and each call takes at most
64 MiB of files (the working tree plus the carried paths). So the run carries:

- ``.whl/``: wheels for Python 3.12, manylinux x86-64, of the packages the image lacks
  (``benchmarks/gpu/wheels.txt``), fetched here from PyPI;
- ``.gpu/part0/``, ``.gpu/part1/``: the SmolLM2-135M GGUF (94 MiB) in two halves, one per call,
  each with a manifest of sizes and SHA-256 digests, joined and verified there.

Commands (repository root; both folders are git-ignored through .git/info/exclude)::

    python benchmarks/gpu/carry.py prepare     # fetch wheels, split the model, check, print the plan
    python benchmarks/gpu/carry.py check       # resolve the wheels against the image, size each call

On the device, run.sh calls ``join`` (reassemble the model once every part has arrived),
``check-env`` (the wheels' and colm's requirements against the live machine, before any GPU
time is spent on training) and ``summary`` (the one-line result).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import Version

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
#: Where the carried folders are (``.whl/``, ``.gpu/``): the repository root, or $CARRY_DIR.
CARRY = Path(os.environ.get("CARRY_DIR") or ROOT)
WHEELS = CARRY / ".whl"
PARTS = CARRY / ".gpu"
LIMIT_BYTES = 64 * 2**20  # one call's working tree plus its carried paths
N_PARTS = 2
MANIFEST = "manifest.json"
#: The device's interpreter and platform, for pip download and for evaluating markers.
DEVICE_ENV = {
    "python_version": "3.12", "python_full_version": "3.12.3", "implementation_name": "cpython",
    "platform_python_implementation": "CPython", "sys_platform": "linux", "os_name": "posix",
    "platform_system": "Linux", "platform_machine": "x86_64", "extra": "",
}
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64"]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# ----------------------------------------------------------------------------- package lists
def read_pins(path: Path) -> list[Requirement]:
    """``name==version`` lines (``#`` comments): the wheels to carry."""
    pins = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            req = Requirement(line)
        except InvalidRequirement as err:
            raise SystemExit(f"{path}:{number}: {err}") from None
        if len(req.specifier) != 1 or next(iter(req.specifier)).operator != "==":
            raise SystemExit(f"{path}:{number}: expected one exact pin name==version, got {line!r}")
        pins.append(req)
    return pins


def read_image(path: Path) -> dict[str, Version | None]:
    """The image's packages: canonical name -> version where known, else None."""
    image: dict[str, Version | None] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            image[canonical(name)] = Version(version) if version else None
    return image


@dataclass
class Wheel:
    path: Path
    name: str
    version: Version
    requires: list[Requirement]


def read_wheel(path: Path) -> Wheel:
    """Name, version and unconditional requirements (markers evaluated for the device) of a wheel."""
    with zipfile.ZipFile(path) as archive:
        meta_name = next((n for n in archive.namelist() if n.endswith(".dist-info/METADATA")), None)
        if meta_name is None:
            raise SystemExit(f"{path}: not a wheel (no .dist-info/METADATA)")
        text = archive.read(meta_name).decode()
    fields: dict[str, list[str]] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, sep, value = line.partition(": ")
        if sep:
            fields.setdefault(key, []).append(value.strip())
    env = {**default_environment(), **DEVICE_ENV}
    requires = []
    for spec in fields.get("Requires-Dist", []):
        req = Requirement(spec)
        if req.marker is None or req.marker.evaluate(env):
            requires.append(req)
    return Wheel(path, canonical(fields["Name"][0]), Version(fields["Version"][0]), requires)


def project_requirements() -> list[Requirement]:
    """colm's own runtime dependencies (pyproject.toml), which the device must also meet."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the installed colm's metadata lists the same ones
        from importlib.metadata import requires

        specs = [Requirement(r) for r in requires("colm") or []]
        return [r for r in specs if r.marker is None or "extra" not in str(r.marker)]
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return [Requirement(r) for r in data["project"]["dependencies"]]


# ------------------------------------------------------------------------------- resolution
def resolve(wheels: list[Wheel], image: dict[str, Version | None], extra: list[Requirement]) -> tuple[list[str], list[str]]:
    """(problems, unchecked): requirements of the carried wheels and ``extra`` that neither a
    carried wheel nor the image meets; and those the image meets by name only (version unknown)."""
    problems, unchecked = [], []
    carried: dict[str, Wheel] = {}
    for w in wheels:
        if w.name in carried:
            problems.append(f"two wheels of {w.name}: {carried[w.name].path.name} and {w.path.name} (keep one)")
        carried[w.name] = w
    wanted = [(w.path.name, r) for w in wheels for r in w.requires] + [("pyproject.toml", r) for r in extra]
    for who, req in wanted:
        name = canonical(req.name)
        if name in carried:
            version = carried[name].version
            where = f"carried {carried[name].path.name}"
        elif name in image:
            version = image[name]
            where = "the image"
            if version is None:
                if req.specifier:
                    unchecked.append(f"{who}: {req} (the image has {name}, version unknown)")
                continue
        else:
            problems.append(f"{who} needs {req}: neither carried nor in the image")
            continue
        if req.specifier and not req.specifier.contains(version, prereleases=True):
            problems.append(f"{who} needs {req}, but {where} has {name} {version}")
    return problems, unchecked


def tree_bytes() -> int:
    """Bytes of what every call sends: tracked and untracked-not-ignored files."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=ROOT, capture_output=True, check=True).stdout
    return sum((ROOT / p).stat().st_size for p in out.decode().split("\0") if p and (ROOT / p).is_file())


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def transfers() -> list[list[Path]]:
    """The carried paths of each call: the wheels travel with the first part."""
    return [[WHEELS, PARTS / "part0"]] + [[PARTS / f"part{k}"] for k in range(1, N_PARTS)]


# ------------------------------------------------------------------------------- the model
def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def split(model: Path, folder: Path, n_parts: int = N_PARTS) -> list[Path]:
    """Cut ``model`` into ``n_parts`` halves ``folder/part{k}/model.part{k}``, each folder with a
    manifest naming every part, so whichever arrives first knows what is still missing."""
    size = model.stat().st_size
    chunk = -(-size // n_parts)
    names = [f"model.part{k}" for k in range(n_parts)]
    parts = []
    with open(model, "rb") as f:
        for k, name in enumerate(names):
            (folder / f"part{k}").mkdir(parents=True, exist_ok=True)
            part = folder / f"part{k}" / name
            part.write_bytes(f.read(chunk))
            parts.append(part)
    manifest = {"file": model.name, "bytes": size, "sha256": sha256(model),
                "parts": [{"name": p.name, "bytes": p.stat().st_size, "sha256": sha256(p)} for p in parts]}
    for k in range(n_parts):
        (folder / f"part{k}" / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return parts


def join(parts: Path, out: Path) -> tuple[bool, str]:
    """Reassemble the model in ``out`` from the parts gathered in ``parts``; (done, message)."""
    manifest_path = parts / MANIFEST
    if not manifest_path.is_file():
        return False, f"{parts}: no model part has arrived yet"
    manifest = json.loads(manifest_path.read_text())
    if out.is_file() and out.stat().st_size == manifest["bytes"] and sha256(out) == manifest["sha256"]:
        return True, f"{out}: already joined"
    missing = [p["name"] for p in manifest["parts"] if not (parts / p["name"]).is_file()]
    if missing:
        return False, f"model parts {missing} have not arrived yet (carry them in the next call)"
    for p in manifest["parts"]:
        if sha256(parts / p["name"]) != p["sha256"]:
            raise SystemExit(f"{parts / p['name']}: damaged in transfer (SHA-256 differs from the manifest)")
    tmp = out.with_suffix(".tmp")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "wb") as f:
        for p in manifest["parts"]:
            f.write((parts / p["name"]).read_bytes())
    if sha256(tmp) != manifest["sha256"]:
        raise SystemExit(f"{tmp}: the joined model's SHA-256 differs from the manifest")
    tmp.replace(out)
    return True, f"{out}: joined from {len(manifest['parts'])} parts, {manifest['bytes']} bytes, SHA-256 verified"


# ------------------------------------------------------------------------------- commands
def cmd_prepare(args: argparse.Namespace) -> int:
    pins = read_pins(args.wheels_txt)
    WHEELS.mkdir(exist_ok=True)
    for old in WHEELS.glob("*.whl"):
        old.unlink()
    platform_args = [a for p in PLATFORMS for a in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", *platform_args,
                    "-d", str(WHEELS), *map(str, pins)], check=True)
    model = Path(args.model) if args.model else _smollm2()
    if PARTS.exists():
        for p in PARTS.rglob("*"):
            if p.is_file():
                p.unlink()
    split(model, PARTS)
    return cmd_check(args)


def _smollm2() -> Path:
    sys.path.insert(0, str(ROOT / "src"))
    from colm.models.gguf import smollm2_path

    return Path(smollm2_path())


def cmd_check(args: argparse.Namespace) -> int:
    ok = True
    wheels = [read_wheel(p) for p in sorted(WHEELS.glob("*.whl"))]
    pins = {canonical(r.name): r for r in read_pins(args.wheels_txt)}
    have = {w.name: w for w in wheels}
    for name, pin in pins.items():
        if name not in have or not pin.specifier.contains(have[name].version):
            print(f"FAIL wheel {pin}: not in {WHEELS} (run `carry.py prepare`)")
            ok = False
    problems, unchecked = resolve(wheels, read_image(args.image), project_requirements())
    for p in problems:
        print(f"FAIL {p}")
    for u in unchecked:
        print(f"note {u}: run.sh checks it on the machine")
    ok = ok and not problems
    base = tree_bytes()
    for k, paths in enumerate(transfers()):
        carried = sum(folder_bytes(p) for p in paths)
        total = base + carried
        names = ", ".join(str(p.relative_to(CARRY)) for p in paths)
        verdict = "ok  " if total <= LIMIT_BYTES else "FAIL"
        print(f"{verdict} call {k + 1}: tree {base / 2**20:.1f} MiB + carry [{names}] {carried / 2**20:.1f} MiB "
              f"= {total / 2**20:.1f} MiB (limit {LIMIT_BYTES / 2**20:.0f} MiB)")
        ok = ok and total <= LIMIT_BYTES and carried > 0
    print("carry set: OK" if ok else "carry set: NOT READY")
    return 0 if ok else 1


def cmd_join(args: argparse.Namespace) -> int:
    done, message = join(args.parts, args.out)
    print(message)
    return 0 if done else 3


def cmd_check_env(args: argparse.Namespace) -> int:
    """colm's and the carried wheels' requirements against the installed distributions."""
    installed: dict[str, Version | None] = {}
    for dist in metadata.distributions():
        try:
            installed.setdefault(canonical(dist.metadata["Name"]), Version(dist.version))
        except Exception:  # a distribution with odd metadata: known by name only
            installed.setdefault(canonical(dist.metadata["Name"] or ""), None)
    wheels = [read_wheel(p) for p in sorted(WHEELS.glob("*.whl"))]
    problems, _ = resolve([], installed, [r for w in wheels for r in w.requires] + project_requirements())
    for p in problems:
        print(f"FAIL {p}")
    versions = {n: str(installed.get(n)) for n in ("torch", "transformers", "peft", "accelerate", "datasets", "gguf")}
    print("environment:", json.dumps(versions))
    return 1 if problems else 0


def cmd_summary(args: argparse.Namespace) -> int:
    """One line: per arm, seeds and the mean of each loss and of exact match."""
    runs = json.loads(args.results.read_text())["runs"] if args.results.is_file() else []
    by_arm: dict[str, list[dict]] = {}
    for r in runs:
        by_arm.setdefault(r["arm"], []).append(r)
    keys = [k for k in ("val_loss_natural", "val_loss_mean", "val_loss_worst", "em_mean") if any(k in r for r in runs)]
    parts = []
    for arm, rs in by_arm.items():
        values = " ".join(f"{k.replace('val_loss_', '')}={sum(r[k] for r in rs) / len(rs):.4f}" for k in keys if all(k in r for r in rs))
        parts.append(f"{arm}[{len(rs)}] {values}")
    print(f"SUMMARY {len(runs)} runs: " + "; ".join(parts) if runs else "SUMMARY no finished run")
    return 0 if runs else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wheels-txt", type=Path, default=HERE / "wheels.txt")
    ap.add_argument("--image", type=Path, default=HERE / "image_packages.txt")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="fetch the wheels, split the model, check")
    p.add_argument("--model", default=None, help="GGUF file (default: the installed SmolLM2, `make smollm2`)")
    sub.add_parser("check", help="resolve the wheels against the image; size each call")
    p = sub.add_parser("join", help="on the device: reassemble the model once all parts are there")
    p.add_argument("--parts", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    sub.add_parser("check-env", help="on the device: requirements against the installed packages")
    p = sub.add_parser("summary", help="one line from a results JSON")
    p.add_argument("results", type=Path)
    args = ap.parse_args(argv)
    commands = {"prepare": cmd_prepare, "check": cmd_check, "join": cmd_join, "check-env": cmd_check_env,
                "summary": cmd_summary}
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
