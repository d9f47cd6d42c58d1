"""Every option takes effect or is refused: options the chosen mode would ignore without a word.

`--no-coreset --pool-factor 4` trained without a pool; `--within-source random --feature zo`
computed no features; `--num-train-epochs 1` trained colm's default 100 steps (--max-steps wins);
`colm compare --save-strategy steps` saved nothing. Each is now a usage error naming the option
and the mode that ignores it, before anything loads. A selection option that comes from a
`--config` file and is ignored is a warning instead: `colm train --config run.yaml --no-coreset`
is the documented way to run the same recipe without selection.
"""
from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from typing import Any

from colm.cli.errors import UsageError


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def given_selection_fields(sel: Any) -> list[str]:
    """The selection options whose value differs from their default (set by flag or YAML)."""
    from colm.field_types import TextValueError, from_text, option_types

    types = option_types(type(sel))
    given = []
    for f in dataclasses.fields(sel):
        if f.name == "no_coreset":
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if f.name in types:  # the parser converts a text default ('none') as it converts a flag's text
            try:
                default = from_text(default, types[f.name])
            except TextValueError:
                pass
        if getattr(sel, f.name) != default and str(getattr(sel, f.name)) != str(default):
            given.append(f.name)
    return given


def on_command_line(name: str, argv: Sequence[str]) -> bool:
    """Whether option `name` (a field name) was typed as a flag, in either spelling."""
    spellings = {_option(name), "--" + name}
    return any(token in spellings or token.split("=", 1)[0] in spellings for token in argv)


def _refuse_or_warn(mode: str, fields: Sequence[str], sel: Any, argv: Sequence[str], command: str) -> None:
    """Refuse the fields typed as flags; warn about those that came from the --config file."""
    typed = [f for f in fields if on_command_line(f, argv)]
    if typed:
        _refuse(mode, typed, sel)
    shown = ", ".join(f"{f.replace('_', '-')}: {getattr(sel, f)}" for f in fields)
    print(f"{command}: warning: --config {shown}: does nothing with {mode}", file=sys.stderr, flush=True)


def _refuse(mode: str, fields: Sequence[str], sel: Any, where: str = "") -> None:
    """`sel`: the parsed options (shown as --option value), or an arm's overrides (key=value)."""
    shown = ", ".join(f"{_option(f)} {getattr(sel, f)}" if not isinstance(sel, dict) else f"{f}={sel[f]}"
                      for f in fields)
    raise UsageError(f"{where}{shown}: does nothing with {mode}; leave {'it' if len(fields) == 1 else 'them'} "
                     "out, or choose a mode that uses it")


def check_selection_options(sel: Any, coreset: Any, argv: Sequence[str]) -> None:
    """colm train: refuse selection options that --no-coreset or the chosen method ignores."""
    from colm.selection.ignored import ignored_fields

    given = given_selection_fields(sel)
    if coreset is None:
        if given:
            _refuse_or_warn("--no-coreset (training without selection)", given, sel, argv, "colm train")
        return
    mode, ignored = ignored_fields(coreset, given)
    if ignored:
        _refuse_or_warn(mode, ignored, sel, argv, "colm train")


def _config(arm: Any, base: Any, seed: int) -> Any:
    """The arm's CoresetConfig, or None when it has none or an invalid one (refused later, by name)."""
    try:
        return arm.coreset_config(base, seed)
    except (ValueError, TypeError):
        return None


def check_compare_options(sel: Any, targs: Any, arms: Sequence[Any], base: Any, seed: int,
                          argv: Sequence[str]) -> None:
    """colm compare: refuse train options that a comparison ignores, base selection options that
    no arm uses, and arm overrides that the arm's own mode ignores."""
    from colm.selection.ignored import ignored_fields
    from colm.training.checks import check_epochs

    if sel.no_coreset:
        raise UsageError("--no-coreset: does nothing in colm compare: the arms say which runs select "
                         "(plain, accumulate2, accumulate4 and reweighted have no pool); leave it out")
    if targs.resume_from_checkpoint:
        raise UsageError("--resume-from-checkpoint: does nothing in colm compare: a rerun into the same "
                         "--output-dir resumes from results.jsonl by itself; leave it out")
    if str(getattr(targs.save_strategy, "value", targs.save_strategy)) != "no":
        raise UsageError(f"--save-strategy {getattr(targs.save_strategy, 'value', targs.save_strategy)}: does "
                         "nothing in colm compare: it saves no checkpoints (a rerun resumes run by run from "
                         "results.jsonl); leave it out")
    check_epochs(targs, "colm compare")
    if sel.selection_seed is not None:
        raise UsageError(f"--selection-seed {sel.selection_seed}: does nothing in colm compare: each run's "
                         "selection is seeded with its --seeds seed; to fix one for an arm, give it as an "
                         "override (stratified:selection_seed=N)")
    for arm in arms:
        cfg = _config(arm, base, seed)
        if cfg is not None and cfg.pool_factor == 1:
            raise UsageError(f"--arms {arm.name}: pool_factor 1 has no pool to select from, so this arm "
                             "trains exactly like plain; use the plain arm, or a pool_factor >= 2")
        if cfg is not None and arm.overrides:
            mode, ignored = ignored_fields(cfg, list(arm.overrides))
            if ignored:
                _refuse(mode, ignored, dict(arm.overrides), where=f"--arms {arm.name}: ")
    given = given_selection_fields(sel)
    unused = []
    for name in given:
        used = False
        for arm in arms:
            cfg = _config(arm, base, seed)
            if cfg is not None:
                used = used or name not in ignored_fields(cfg, [name])[1]
            elif arm.sampler is not None:  # the re-weighting control copies the stratified source mix
                used = used or name in ("pool_factor", "small_sources")
        if not used:
            unused.append(name)
    if unused:
        _refuse_or_warn(f"the arms {', '.join(a.name for a in arms)} (no arm uses "
                        f"{'it' if len(unused) == 1 else 'them'})", unused, sel, argv, "colm compare")
