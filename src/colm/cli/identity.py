"""What defines a `colm train` run, recorded when it starts and compared when it resumes.

A resume continues the optimizer, the scheduler and the selector from a checkpoint; if the data,
the model, the batch or a selection setting changed in between, the result is a mixture of two
runs that neither report describes. So a run's identity (the fields below) is written into its
folder as `colm_identity.json` before its first step, and a resume whose identity differs is
refused with one line naming every changed field (old -> new). `--allow-changed-settings FIELD,...`
continues anyway; each change is kept in the file with the step it happened at, and the report
lists them, so it still describes what actually ran.

Selection settings are compared field by field from `CoresetConfig.to_dict()`, so a field that is
added or renamed is compared without a change here.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from colm.cli.errors import UsageError

IDENTITY_FILE = "colm_identity.json"
#: Written in place of a value a run from an older colm did not record.
NOT_RECORDED = "(not recorded)"
OPTION = "--allow-changed-settings"


@dataclasses.dataclass
class RunArguments:
    """How a resumed run treats settings that differ from the ones it started with."""

    _argument_group_name = "resuming"

    allow_changed_settings: str | None = dataclasses.field(
        default=None,
        metadata={"help": (
            "Comma-separated run settings a resume may change (names as the refusal prints them, "
            "e.g. 'max_length,coreset.pool_factor', or 'all'). Without it a resume with other data, "
            "model, batch, max length, seeds or selection settings is refused. Each change is "
            "recorded in colm_identity.json and the report with the step it was made at."
        )},
    )


def run_identity(
    model_args: Any, data_args: Any, targs: Any, coreset: Any, train_raw: Any, tokenizer: Any,
) -> dict[str, Any]:
    """The fields that define a run, as JSON values (flat: `coreset.<field>` for selection)."""
    from collections import Counter

    from colm.data.tokenized_cache import data_digest, tokenizer_digest
    from colm.models.checkpoint import absolute_if_local

    sources = dict(sorted(Counter(train_raw["source"]).items()))
    tok = tokenizer_digest(tokenizer)
    identity: dict[str, Any] = {
        # The examples themselves (after --sources and the per-source cap), not the file name.
        "data": data_digest(train_raw.data.table)[:16],
        "data_sources": sources,
        "model": absolute_if_local(model_args.model) or "colm's embedded default",
        "model_size": model_args.model_size if model_args.model is None else None,
        "dtype": model_args.dtype,
        "lora_r": model_args.lora_r,
        "lora_alpha": model_args.lora_alpha,
        "lora_dropout": model_args.lora_dropout,
        "lora_target_modules": list(model_args.lora_target_modules or []),
        "tokenizer": tok[:16] if tok is not None else type(tokenizer).__name__,
        "template": data_args.template,
        "use_chat_template": data_args.use_chat_template,
        "max_length": data_args.max_length,
        "per_device_train_batch_size": targs.per_device_train_batch_size,
        "gradient_accumulation_steps": targs.gradient_accumulation_steps,
        "world_size": targs.world_size,
        "seed": targs.seed,
        "data_seed": targs.data_seed,
        "selection": coreset is not None,
    }
    if coreset is not None:
        for name, value in coreset.to_dict().items():
            identity[f"coreset.{name}"] = value
    # Through JSON once, so a fresh identity compares equal to the one read back from the file.
    return json.loads(json.dumps(identity, default=str))


def read_identity(run_folder: Path) -> dict[str, Any] | None:
    """The recorded identity file of a run folder; None when the run recorded none."""
    path = run_folder / IDENTITY_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(record, dict) or not isinstance(record.get("identity"), dict):
            raise ValueError("no 'identity' object")
    except (ValueError, UnicodeDecodeError) as err:
        raise UsageError(f"{path}: unreadable run identity ({err}); it is written by colm train "
                         "when a run starts") from None
    record.setdefault("changes", [])
    return record


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(field, old, new) of every field that differs, in the order of `new` then `old`."""
    names = list(new) + [k for k in old if k not in new]
    return [(k, old.get(k, NOT_RECORDED), new.get(k, NOT_RECORDED))
            for k in names if old.get(k, NOT_RECORDED) != new.get(k, NOT_RECORDED)]


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {v}" for k, v in value.items()) + "}"
    return json.dumps(value) if not isinstance(value, str) else value


def parse_allowed(text: str | None, known: Sequence[str]) -> set[str]:
    """The field names of --allow-changed-settings ('all' for every field)."""
    if not text:
        return set()
    names = {n.strip() for n in text.split(",") if n.strip()}
    if "all" in names:
        return set(known)
    aliases = {k.split(".", 1)[1]: k for k in known if k.startswith("coreset.")}
    unknown = sorted(n for n in names if n not in known and n not in aliases)
    if unknown:
        raise UsageError(f"{OPTION}: unknown run setting(s) {unknown}; the settings are "
                         f"{', '.join(known)} (or 'all')")
    return {aliases.get(n, n) for n in names}


def check_resume(
    run_folder: Path, new: dict[str, Any], allowed_text: str | None, resume_step: int,
) -> dict[str, Any]:
    """The identity record to write for a resume at `resume_step`: the recorded one when
    nothing changed, with the allowed changes appended otherwise. Raises UsageError naming every
    change that was not allowed. A run that recorded no identity (older colm) is not compared."""
    record = read_identity(run_folder)
    if record is None:
        return {"identity": new, "changes": [], "note": "started without a recorded identity"}
    changed = differences(record["identity"], new)
    allowed = parse_allowed(allowed_text, sorted(set(new) | set(record["identity"])))
    refused = [c for c in changed if c[0] not in allowed]
    if refused:
        listed = "; ".join(f"{k}: {_show(o)} -> {_show(n)}" for k, o, n in refused)
        names = ",".join(k for k, _, _ in refused)
        raise UsageError(
            f"--resume-from-checkpoint: {run_folder} was trained with other settings ({listed}); "
            f"resume with the settings it started with, or pass {OPTION} {names} to continue "
            "with the new ones (the report records the change and its step)"
        )
    changes = list(record["changes"])
    changes += [{"step": resume_step, "field": k, "old": o, "new": n} for k, o, n in changed]
    return {**record, "identity": new, "changes": changes}


def changes_markdown(changes: Sequence[dict[str, Any]]) -> str:
    """A report.md section listing the settings a resume changed (empty when none)."""
    if not changes:
        return ""
    lines = ["", "## Settings changed on resume", "",
             "The run did not use one setting throughout: from the step shown on, it used the new value.", "",
             "| step | setting | before | after |", "|---|---|---|---|"]
    lines += [f"| {c['step']} | {c['field']} | {_show(c['old'])} | {_show(c['new'])} |" for c in changes]
    return "\n".join(lines) + "\n"
