"""`results.jsonl`: one comparison, recorded one finished run at a time.

A comparison is one experiment: every run in its file was trained with the same data, model and
recipe, so its seeds may be averaged and paired. The file's first line records the comparison's
`settings` (the arms, seeds and options) and its `identity` (digests of the training and
validation data and the tokenizer, and every training option that shapes a result). A rerun into
the same folder resumes only when both match; otherwise it is refused naming each field old ->
new, as `colm train`'s resume is, and `--allow-changed-settings FIELD,...` continues with an
identity record appended (the runs after it used the new values, and the report lists the change).

Files written before the identity existed (a header with `settings` only) still resume when the
settings they record match: what was not recorded cannot be compared, so the current identity is
appended as a record from then on, and one line says so.

Damage: a torn last line (a write cut short by a kill or a full disk) is dropped with a note,
keeping every finished run before it; a damaged line before the last is an error naming the file
and line. A run recorded twice counts once (the first record).
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from colm.files import finite_json, writing

#: Written in place of a field that one side did not record.
NOT_RECORDED = "(not recorded)"
ALLOW_OPTION = "--allow-changed-settings"


class ResultsFileError(ValueError):
    """A results file that cannot be resumed: damaged, or from another experiment."""


def flatten(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted field names (`model.lora_r`, `coreset.pool_factor`); lists are values."""
    flat: dict[str, Any] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(finite_json(value), default=str))


#: Losses a run row holds as numbers: written as null when not finite (JSON has no NaN), read
#: back as NaN (an undefined natural mixture, say, stays a number to the report).
LOSS_KEYS = ("val_loss_natural", "val_loss_mean", "val_loss_worst")


def _numbers_back(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, **{k: float("nan") for k in LOSS_KEYS if k in row and row[k] is None}}


class ResultsFile:
    """JSON lines: a header (`settings` and `identity`), then one line per calibration, per
    arm x seed run and per allowed change of identity."""

    def __init__(self, path: Path, settings: dict[str, Any], identity: dict[str, Any] | None = None,
                 allow_changed: str | None = None) -> None:
        self.path = path
        self.settings = _jsonable(settings)
        self.identity = _jsonable(identity or {})
        self.runs: list[dict[str, Any]] = []
        self.ratios: dict[str, float] = {}
        #: Changes allowed on a resume: {"field", "old", "new", "after_runs"} each.
        self.changes: list[dict[str, Any]] = []
        #: Lines to print about what the resume found (a torn line dropped, an identity recorded).
        self.notes: list[str] = []
        if path.is_file() and path.stat().st_size:
            self._resume(allow_changed)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._append({"kind": "settings", "settings": self.settings, "identity": self.identity})

    # ---- reading ---------------------------------------------------------------------------
    def _read_lines(self) -> list[tuple[int, dict[str, Any]]]:
        """(line number, record) of every line; a torn last line is cut off the file."""
        raw = self.path.read_bytes()
        lines = raw.split(b"\n")
        records: list[tuple[int, dict[str, Any]]] = []
        offset = 0
        for number, line in enumerate(lines, start=1):
            start, offset = offset, offset + len(line) + 1
            if not line.strip():
                continue
            try:
                record = json.loads(line.decode("utf-8"))
                if not isinstance(record, dict):
                    raise ValueError("not a JSON object")
            except (ValueError, UnicodeDecodeError) as err:
                rest = b"".join(lines[number:]).strip()
                if rest:  # damage before the last line: a person must look at it
                    raise ResultsFileError(
                        f"{self.path}:{number}: damaged line ({err}); the {len(records)} line(s) before it "
                        f"are intact: delete line {number} (its run is then trained again), or use "
                        "another --output-dir") from None
                # the last line, torn by a kill or a full disk: keep everything before it
                with writing(f"cutting a torn line off {self.path.name}", self.path):
                    with open(self.path, "r+b") as f:
                        f.truncate(start)
                self.notes.append(f"{self.path}:{number}: dropped a torn last line (a write cut short); "
                                  f"the {sum(1 for _, r in records if r.get('kind') == 'run')} finished "
                                  "run(s) before it are kept")
                break
            records.append((number, record))
        if raw and not raw.endswith(b"\n") and not self.notes:  # a complete last line without its newline
            with writing(f"appending to {self.path.name}", self.path):
                with open(self.path, "ab") as f:
                    f.write(b"\n")
        return records

    def _resume(self, allow_changed: str | None) -> None:
        records = self._read_lines()
        if not records or records[0][1].get("kind") != "settings" or not isinstance(
                records[0][1].get("settings"), dict):
            raise ResultsFileError(f"{self.path}:1: not a colm compare settings header; use another "
                                   "--output-dir, or --overwrite-output-dir to replace the file")
        recorded_settings = records[0][1]["settings"]
        recorded_identity = records[0][1].get("identity")
        seen: set[tuple[str, int]] = set()
        duplicates = 0
        for number, record in records[1:]:
            kind = record.get("kind")
            try:
                if kind == "run":
                    row = record["row"]
                    key = (str(row["arm"]), int(row["seed"]))
                    if key in seen:
                        duplicates += 1
                        continue
                    seen.add(key)
                    self.runs.append(_numbers_back(row))
                elif kind == "calibration":
                    self.ratios[str(record["arm"])] = float(record["ratio"])
                elif kind == "identity":
                    recorded_settings = record.get("settings", recorded_settings)
                    recorded_identity = record["identity"]
                    self.changes.extend(record.get("changes", []))
            except (KeyError, TypeError, ValueError) as err:
                raise ResultsFileError(f"{self.path}:{number}: a {kind} record without its fields "
                                       f"({type(err).__name__}: {err})") from None
        legacy = not isinstance(recorded_identity, dict)  # neither the header nor a later record has one
        if duplicates:
            self.notes.append(f"{self.path}: {duplicates} run(s) recorded twice; each counts once")
        old = flatten(recorded_settings)
        new = flatten(self.settings)
        if not legacy:
            old.update(flatten(recorded_identity, "identity."))
            new.update(flatten(self.identity, "identity."))
        changed = differences(old, new)
        self._check_allowed(changed, allow_changed, sorted(set(old) | set(new)))
        if legacy:
            self.notes.append(
                f"{self.path}: written before colm recorded a comparison's identity (data digest, "
                f"every training option); its settings match, so it resumes, and the identity is recorded "
                f"from now on (runs before this point were checked on the recorded settings only)")
            self._append({"kind": "identity", "settings": self.settings, "identity": self.identity,
                          "after_runs": len(self.runs), "note": "recorded on resume of a file without one",
                          "changes": []})
        elif changed:
            changes = [{"field": k, "old": o, "new": n, "after_runs": len(self.runs)} for k, o, n in changed]
            self.changes.extend(changes)
            self._append({"kind": "identity", "settings": self.settings, "identity": self.identity,
                          "after_runs": len(self.runs), "changes": changes})
            self.notes.append(f"{self.path}: continuing with changed settings "
                              f"({', '.join(c['field'] for c in changes)}); the report lists them")

    def _check_allowed(self, changed: Sequence[tuple[str, Any, Any]], allow_changed: str | None,
                       known: Sequence[str]) -> None:
        if not changed:
            return
        allowed = parse_allowed(allow_changed, known)
        refused = [c for c in changed if c[0] not in allowed]
        if refused:
            listed = "; ".join(f"{k}: {_show(o)} -> {_show(n)}" for k, o, n in refused)
            raise ResultsFileError(
                f"{self.path}: its runs were trained with other settings ({listed}); a comparison is one "
                f"experiment: rerun with the settings it started with, use another --output-dir, "
                f"--overwrite-output-dir to start over, or {ALLOW_OPTION} "
                f"{','.join(k for k, _, _ in refused)} to continue with the new ones (the report lists "
                "the change)")

    # ---- writing ---------------------------------------------------------------------------
    def done(self, arm: str, seed: int) -> bool:
        return any(r["arm"] == arm and r["seed"] == seed for r in self.runs)

    def add_run(self, row: dict[str, Any]) -> None:
        self._append({"kind": "run", "row": row})
        self.runs.append(_numbers_back(_jsonable(row)))

    def add_ratio(self, arm: str, ratio: float) -> None:
        self._append({"kind": "calibration", "arm": arm, "ratio": ratio})
        self.ratios[arm] = ratio

    def _append(self, record: dict[str, Any]) -> None:
        # One line per finished unit, flushed to disk: a kill loses at most the run in progress.
        # NaN is no JSON: a non-finite number is written as null (strict readers reject NaN).
        line = json.dumps(finite_json(record), default=str, allow_nan=False) + "\n"
        with writing(f"appending to {self.path.name}", self.path):
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(field, old, new) of the fields that differ. A field the old record lacks was not recorded
    then (an older colm, or an option added since): it cannot be compared and is accepted."""
    names = list(new) + [k for k in old if k not in new]
    return [(k, old.get(k, NOT_RECORDED), new.get(k, NOT_RECORDED))
            for k in names if k in old and old.get(k) != new.get(k, NOT_RECORDED)]


def parse_allowed(text: str | None, known: Sequence[str]) -> set[str]:
    """The field names of --allow-changed-settings ('all' for every field; a name also matches
    its last dotted part, e.g. `weight_decay` for `identity.training.weight_decay`)."""
    if not text:
        return set()
    names = {n.strip() for n in text.split(",") if n.strip()}
    if "all" in names:
        return set(known)
    allowed: set[str] = set()
    unknown = []
    for name in names:
        hits = [k for k in known if k == name or k.endswith("." + name)]
        if not hits:
            unknown.append(name)
        allowed.update(hits)
    if unknown:
        raise ResultsFileError(f"{ALLOW_OPTION}: unknown setting(s) {sorted(unknown)} of this comparison; "
                               "give the names the refusal printed, or 'all'")
    return allowed


def changes_markdown(changes: Sequence[dict[str, Any]]) -> str:
    """A report.md section listing the settings changed on a resume (empty when none)."""
    if not changes:
        return ""
    lines = ["## Settings changed on resume", "",
             "Not every run used the same settings: the runs recorded after the count shown used the new value.",
             "", "| after runs | setting | before | after |", "|---:|---|---|---|"]
    lines += [f"| {c.get('after_runs', '?')} | {c['field']} | {_show(c['old'])} | {_show(c['new'])} |"
              for c in changes]
    return "\n".join(lines) + "\n"
