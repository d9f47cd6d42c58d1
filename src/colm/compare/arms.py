"""The arms `colm compare` trains: named presets, optionally with CoresetConfig overrides.

An arm says how one optimizer step gets its b rows: plain training (the Trainer's random order),
gradient accumulation of k x b, the re-weighting control (a plain batch drawn with the
stratified coreset's source mix, no pool), or a coreset of a pool with some CoresetConfig. On the
command line an arm is `PRESET`, `PRESET:KEY=VALUE[:KEY=VALUE...]`, or `KEY=VALUE[:...]` (the
overrides on `stratified`, colm's default config); the arm's name is what was typed.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from colm.config import CoresetConfig

#: The paper's selection as colm implements it: facility location on zeroth-order features, m = 1.
PAPER = {"within_source": "facility_location", "feature": "zo", "zo_probes": 1}


@dataclass(frozen=True)
class Arm:
    """One way to fill an optimizer step.

    accumulation: multiplies the run's gradient_accumulation_steps (the step trains that many x b).
    coreset: CoresetConfig overrides on the run's config, or None for no pool.
    sampler: "reweighted" for the re-weighting control (needs coreset None), else None.
    """

    name: str
    accumulation: int = 1
    coreset: Mapping[str, Any] | None = None
    sampler: str | None = None
    description: str = ""
    overrides: Mapping[str, Any] = field(default_factory=dict)

    @property
    def pooled(self) -> bool:
        return self.coreset is not None

    def coreset_config(self, base: CoresetConfig, seed: int) -> CoresetConfig | None:
        """The arm's CoresetConfig on top of the run's `base` (None: no pool); seeded by `seed`
        unless the arm overrides selection_seed."""
        if self.coreset is None:
            return None
        # The run's seed, unless the arm's own override fixes one: an override always wins.
        return dataclasses.replace(base, **{**self.coreset, "selection_seed": seed, **self.overrides})

    def proportions_config(self, base: CoresetConfig) -> CoresetConfig:
        """The config whose stratified coreset the re-weighting control imitates."""
        return dataclasses.replace(base, **self.overrides)


PRESETS: dict[str, Arm] = {
    "plain": Arm("plain", description="plain training, b rows per step"),
    "accumulate2": Arm("accumulate2", accumulation=2, description="2b per step by gradient accumulation"),
    "accumulate4": Arm("accumulate4", accumulation=4, description="4b per step by gradient accumulation"),
    "reweighted": Arm("reweighted", sampler="reweighted",
                      description="no pool: b rows drawn with the stratified coreset's expected source mix"),
    "stratified": Arm("stratified", coreset={"within_source": "random"},
                      description="colm's default: pool, small sources whole, the rest at random within sources"),
    "paper": Arm("paper", coreset=dict(PAPER),
                 description="the paper's CoLM: facility location on zeroth-order features (m = 1)"),
    "mean_match": Arm("mean_match",
                      coreset={"within_source": "mean_match", "feature": "exact", "adam_second_moment": "pool"},
                      description="mean matching on exact last-layer features, pool second moment"),
}
#: The arm an override list without a preset modifies.
DEFAULT_PRESET = "stratified"


class ArmError(ValueError):
    """An --arms entry that names no preset or sets an invalid CoresetConfig value."""


def parse_arm(spec: str) -> Arm:
    """One `--arms` entry (see the module docstring)."""
    text = spec.strip()
    if not text:
        raise ArmError("--arms: empty arm name")
    parts = text.split(":")
    preset_name, items = (parts[0], parts[1:]) if "=" not in parts[0] else (DEFAULT_PRESET, parts)
    if preset_name not in PRESETS:
        raise ArmError(f"--arms: unknown arm {preset_name!r}; presets: {', '.join(PRESETS)} "
                       "(optionally PRESET:KEY=VALUE with CoresetConfig fields)")
    preset = PRESETS[preset_name]
    if not items:
        return preset
    if preset.coreset is None and preset.sampler is None:
        raise ArmError(f"--arms: {text!r}: {preset_name} trains without a pool, so it takes no "
                       "CoresetConfig overrides")
    fields = {f.name for f in dataclasses.fields(CoresetConfig)} - {"seed"}
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in fields:
            raise ArmError(f"--arms: {text!r}: {item!r} is not KEY=VALUE with a CoresetConfig field; "
                           f"fields: {', '.join(sorted(fields))}")
        overrides[key] = yaml.safe_load(value) if value.strip() else None
    arm = dataclasses.replace(preset, name=text, overrides=overrides)
    try:
        arm.proportions_config(CoresetConfig())
    except (ValueError, TypeError) as err:
        raise ArmError(f"--arms: {text!r}: {' '.join(str(err).split())}") from None
    return arm


def parse_arms(spec: str) -> list[Arm]:
    """A comma-separated `--arms` value; duplicates are refused (results are keyed by name)."""
    arms = [parse_arm(s) for s in spec.split(",")]
    names = [a.name for a in arms]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ArmError(f"--arms: {dupes} listed twice")
    return arms
