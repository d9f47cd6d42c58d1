"""Is every file of a checkpoint whole? Checked before a resume loads it.

A checkpoint folder is complete once `trainer_state.json` is written, but a file in it can still
be damaged afterwards (a disk error, a copy cut short, an edit). The Trainer then fails deep
inside safetensors or torch.load with an error that names no file ("incomplete metadata, file
not fully covered", "failed finding central directory", "[Errno 22] Invalid argument"). The
checks here read only headers and directories, never the tensors: a safetensors file must be as
long as its header says, and a torch.save file (`.pt`, `.pth`, `.bin`) must be a readable zip
archive.
"""
from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

#: torch.save's zip-archive files the Trainer reads back on resume.
TORCH_SUFFIXES = (".pt", ".pth", ".bin")


def safetensors_problem(path: Path) -> str | None:
    """Why a .safetensors file is not whole (None when its header and length agree)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"{size} bytes, shorter than a safetensors header"
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            return f"its header claims {n} bytes but the file has {size}"
        try:
            header = json.loads(f.read(n))
        except (ValueError, UnicodeDecodeError):
            return "its header is not JSON"
    if not isinstance(header, dict):
        return "its header is not a JSON object"
    ends = [v["data_offsets"][1] for k, v in header.items()
            if k != "__metadata__" and isinstance(v, dict) and isinstance(v.get("data_offsets"), list)
            and len(v["data_offsets"]) == 2]
    need = 8 + n + max(ends, default=0)
    if size < need:
        return f"{size} bytes, but its tensors need {need}"
    return None


def torch_file_problem(path: Path) -> str | None:
    """Why a torch.save file is not a readable archive (None when it is; a legacy non-zip
    pickle is not judged)."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic[:2] != b"PK":  # not a zip: torch's legacy format, or garbage the load will name
        return None if magic[:1] == b"\x80" else "neither a zip archive nor a pickle"
    try:
        with zipfile.ZipFile(path) as archive:
            archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        return f"not a readable archive ({err})"
    return None


def damaged_files(checkpoint: str | Path) -> list[tuple[Path, str]]:
    """(file, why) for every checkpoint file that is cut short or unreadable."""
    found = []
    for path in sorted(Path(checkpoint).iterdir()):
        if not path.is_file():
            continue
        try:
            if path.suffix == ".safetensors":
                why = safetensors_problem(path)
            elif path.suffix in TORCH_SUFFIXES:
                why = torch_file_problem(path)
            else:
                continue
        except OSError as err:
            why = f"unreadable ({err.strerror or err})"
        if why is not None:
            found.append((path, why))
    return found
