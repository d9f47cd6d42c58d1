"""Which CoresetConfig fields a configuration ignores.

A field can be valid and still do nothing: the gradient-feature settings under a method that
looks at no features (`within_source='random'` with `feature='zo'`), every selection setting at
`pool_factor=1` (no pool: plain training), `feature_modules` with hidden-state features, the
warm-up of pseudo-sources that are off. Callers that know which fields a person set (the CLI)
refuse those, naming the mode that ignores them.
"""
from __future__ import annotations

from collections.abc import Iterable

from colm.config import CoresetConfig

#: Fields that only shape the gradient features and their comparison.
FEATURE_FIELDS = ("feature", "zo_eps", "zo_probes", "zo_fixed_z", "feature_modules", "similarity", "topk_dims",
                  "adam_normalize", "adam_second_moment", "adam_betas", "adam_eps", "score_batch_size")
#: Fields that matter without a pool too (the seed is the run's, recorded either way).
ALWAYS_USED = ("pool_factor", "selection_seed")


def ignored_fields(config: CoresetConfig, given: Iterable[str]) -> tuple[str, list[str]]:
    """(the mode that ignores them, the fields of `given` that `config` ignores); ("", []) when
    every given field takes effect."""
    given = list(given)
    if config.pool_factor == 1:
        return ("pool_factor 1 (no pool: every step trains its batch as drawn)",
                [g for g in given if g not in ALWAYS_USED])
    if not config.needs_features:
        return (f"within_source {config.within_source} (it looks at no gradient features)",
                [g for g in given if g in FEATURE_FIELDS])
    if config.feature == "hidden" and "feature_modules" in given:
        return ("feature hidden (the last hidden state, not parameters)", ["feature_modules"])
    if config.pseudo_sources is None and "pseudo_source_warmup_steps" in given:
        return ("pseudo_sources none", ["pseudo_source_warmup_steps"])
    return ("", [])
