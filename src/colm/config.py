"""CoresetConfig: every knob of the selection, typed, documented and validated.

One dataclass is shared by the selector (framework-free), the feature extractors and the trainer,
so a run is described by a single JSON-serializable object that is saved with checkpoints. Its
field names do not clash with ``transformers.TrainingArguments`` or ``trl.SFTConfig``, so one
``HfArgumentParser((TrainingArguments, CoresetConfig))`` parses both.

Renamed fields (old names accepted with a FutureWarning until colm 0.3): ``seed`` ->
``selection_seed`` (TrainingArguments has ``seed``), ``target_modules`` -> ``feature_modules``
(peft's ``LoraConfig.target_modules`` names the modules LoRA adapts).
"""

# No `from __future__ import annotations` here: with string annotations, typing.get_type_hints
# (which HfArgumentParser and the CLI call on this class) fails on Python 3.10 at the InitVar
# fields below; evaluated annotations work on every supported version.
import dataclasses
import re
import warnings
from collections.abc import Sequence
from dataclasses import InitVar, dataclass, field, fields
from typing import Any, Literal, get_args

from colm.errors import ConfigError, RenamedWarning, check_int, check_optional_int
from colm.features.registry import feature_names
from colm.field_types import from_text
from colm.selection.methods.registry import feature_free_names, get_method, method_names

Similarity = Literal["l1", "l2", "cosine"]
LossAverage = Literal["token", "example"]
SecondMoment = Literal["per_example", "pool"]
#: A number of clusters, "auto", or None (the data's own sources).
PseudoSources = int | str | None
SIMILARITIES = get_args(Similarity)
#: The feature kinds registered at import (``colm.features.registry`` is the source of truth; one
#: registered later is accepted too).
FEATURES = feature_names()
LOSS_AVERAGES = get_args(LossAverage)
SECOND_MOMENTS = get_args(SecondMoment)
SMALL_SOURCE_RULES = ("below_mean", "none")
#: The within-source methods registered at import (``colm.selection.methods.registry`` is the
#: source of truth; one registered later is accepted too).
WITHIN_SOURCE = method_names()
#: Of those, the ones that look at no gradient feature (no scoring pass).
FEATURE_FREE = feature_free_names()
#: Old field name -> new one (accepted with a FutureWarning for one release).
RENAMED_FIELDS = {"seed": "selection_seed", "target_modules": "feature_modules"}


@dataclass
class CoresetConfig:
    """How colm picks the coreset it trains on at each optimizer step (docs/method.md, steps 1-8)."""

    pool_factor: int = field(default=2, metadata={"help": (
        "Pool size = pool_factor x the batch the optimizer steps on. 1 disables selection."
    )})

    # "default" in metadata: HfArgumentParser gives a list-typed option no default otherwise
    small_sources: str | list[str] = field(default="below_mean", metadata={"default": "below_mean", "help": (
        "Which sources are kept whole: 'below_mean' (dataset-level size below the mean source "
        "size, the paper's rule), 'none', or an explicit list of source names."
    )})

    within_source: str = field(default="random", metadata={"choices": WITHIN_SOURCE, "help": (
        "How each large source's share of the budget is filled. Default 'random': in colm's "
        "measurements no gradient-based method trained better than it, and it costs no "
        "scoring pass (docs/benchmarks.md). 'facility_location': the "
        "paper's medoids of the source's pool rows in the normalized, sparsified feature space. "
        "'random': uniformly at random without replacement, seeded by (selection_seed, step): the "
        "stratified control (small sources kept whole, per-source budgets, no gradient features "
        "and no scoring pass). 'mean_match': the rows whose uniform mean is closest to the "
        "source's pool mean in that feature space (greedy, then improving swaps). "
        "'cluster_sample': facility-location clusters used as strata, each sampled at random in "
        "proportion to its size. 'pps': sampling without replacement with probability "
        "proportional to the feature norm, with Horvitz-Thompson weights (trains a weighted "
        "loss). 'balanced': every row drawn with the uniform probability b_q/n_q, the draw "
        "balanced on the leading principal components of the features (the cube method). "
        "'nnls': mean matching's rows with non-negative least-squares loss weights (summing to "
        "one per source) that fit the source's pool mean best (trains a weighted loss; the "
        "ceiling lab arm). docs/method.md explains each."
    )})

    similarity: Similarity = field(default="l1", metadata={"help": (
        "Facility-location similarity: 'l1' (paper default), 'l2' or 'cosine'."
    )})

    topk_dims: int | None = field(default=2560, metadata={"help": (
        "Coordinates kept per large source, ranked by |mean normalized feature| (paper: 2560 of "
        "327,680). None keeps every coordinate."
    )})

    adam_normalize: bool = field(default=True, metadata={"help": (
        "Match Adam updates m_hat / (sqrt(v_hat) + eps) rather than raw gradients."
    )})

    adam_second_moment: SecondMoment = field(default="per_example", metadata={"help": (
        "The second moment that normalizes each example's gradient. 'per_example': the paper's "
        "m_hat_i / (sqrt(v_hat_i) + eps), with the example's own g_i^2 folded into v_hat_i (a "
        "non-linear map: the mean of normalized features is not the normalized mean). 'pool': "
        "v_hat from the history with the pool's mean g^2 folded in, shared by all examples: one "
        "diagonal preconditioner, features linear in g, so matching their mean matches the "
        "Adam-preconditioned mean gradient. Both use the pool's mean g^2 on the first step "
        "(empty history)."
    )})

    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999], metadata={"help": (
        "Betas of the Adam history used for normalization (should equal the optimizer's)."
    )})

    adam_eps: float = field(default=1e-8, metadata={"help": (
        "Epsilon of the Adam normalization (should equal the optimizer's)."
    )})

    feature: str = field(default="exact", metadata={"choices": FEATURES, "help": (
        "Per-example gradient estimate, for the methods that look at one: 'exact' (default: "
        "per-example gradients via a backward through the last block only, about the cost of "
        "zo with one probe; with it mean matching matched the pool gradient best, while zo "
        "features lost 40 to 75 percent of that gain), 'zo' (zeroth-order SPSA, forward passes only; "
        "the paper's), 'hidden' (the last token's final hidden state, a cheap baseline) or "
        "'full_adam' (a lab tool for small models: full-model per-example gradients via "
        "torch.func in the optimizer's Adam space; memory O(pool x parameters); needs "
        "adam_normalize=False, the features are already Adam-normalized)."
    )})

    zo_eps: float = field(default=1e-3, metadata={"help": (
        "SPSA perturbation size epsilon."
    )})

    zo_probes: int = field(default=1, metadata={"help": (
        "Number m of random directions z_j per step; the feature is sum_j c_ij z_j / m. With m "
        "= 1 every feature of a step is a multiple of the same vector z (rank 1): selection "
        "then sees one number per example, its directional derivative along z, whatever the "
        "seed policy; fresh z per step only changes which number. m directions give a rank-m "
        "random projection of the gradient at 2m replays of the last layer."
    )})

    zo_fixed_z: bool = field(default=False, metadata={"help": (
        "Reuse ONE set of directions for the whole run (the reference code's behaviour, which "
        "makes features rank-deficient). Default: fresh directions every step."
    )})

    feature_modules: list[str] | None = field(default=None, metadata={"help": (
        "Regular expressions over parameter names selecting the parameters whose per-example "
        "gradients are the features (formerly target_modules). None: the value projection of "
        "the last decoder layer (its LoRA B when a LoRA adapter is present)."
    )})

    weighted: bool = field(default=False, metadata={"help": (
        "Train each facility-location medoid with its cluster size as loss weight (the paper "
        "trains uniform). Only 'facility_location' defines cluster weights, so for every other "
        "method this changes nothing: 'pps' always trains its Horvitz-Thompson weights (mean 1 "
        "per source), the other methods train uniform."
    )})

    loss_average: LossAverage = field(default="token", metadata={"help": (
        "How the coreset's loss is averaged: 'token' (mean over all supervised tokens of the "
        "coreset, as transformers.Trainer does) or 'example' (each example's mean token loss, "
        "then the mean over examples: every example weighs the same, as in the paper's "
        "reference code and as selection assumes when it matches per-example gradients)."
    )})

    score_batch_size: int | None = field(default=None, metadata={"help": (
        "Examples per no-grad scoring chunk; None scores the pool in chunks of the training "
        "micro-batch size."
    )})

    selection_seed: int | None = field(default=None, metadata={"help": (
        "Seed of the probe directions and of every random choice the selection makes "
        "(formerly seed). None: the training seed (TrainingArguments.seed) under a "
        "CoresetTrainer, 0 elsewhere."
    )})

    pseudo_sources: PseudoSources = field(default=None, metadata={"help": (
        "Sources for data without (or instead of) a 'source' column: after "
        "pseudo_source_warmup_steps steps, the training rows are embedded by the model (final "
        "hidden state, mean over supervised tokens) and clustered with k-means into this many "
        "clusters, whose ids then serve as sources (small-source rule, per-source budgets). "
        "An integer >= 2, 'auto' (about the cube root of the number of rows, at most a quarter "
        "of the pool, at least 2), or None: the data's own 'source' column."
    )})

    pseudo_source_warmup_steps: int = field(default=20, metadata={"help": (
        "With pseudo_sources: optimizer steps trained before the rows are clustered. Each of "
        "them trains a uniform random batch-sized subset of its pool (selection off, no "
        "scoring). 0 clusters with the initial model (fine for a pretrained one)."
    )})

    # The old names, as constructor arguments only (not fields: HfArgumentParser and to_dict
    # never see them). Read as attributes they are None (dataclasses.replace needs that);
    # read selection_seed / feature_modules.
    seed: InitVar[int | None] = None
    target_modules: InitVar[Sequence[str] | str | None] = None

    def __post_init__(self, seed: int | None = None, target_modules: Sequence[str] | str | None = None) -> None:
        if seed is not None:
            _warn_renamed("seed")
            if self.selection_seed is not None:
                raise ConfigError("seed", "unset when selection_seed is given (seed is its old name)", seed)
            self.selection_seed = seed
        if target_modules is not None:
            _warn_renamed("target_modules")
            if self.feature_modules is not None:
                raise ConfigError(
                    "target_modules", "unset when feature_modules is given (target_modules is its old name)",
                    target_modules,
                )
            self.feature_modules = target_modules  # type: ignore[assignment]  # normalized below
        # Lists, whatever sequence was given: to_dict, YAML and HfArgumentParser all use lists.
        if isinstance(self.adam_betas, tuple):
            self.adam_betas = list(self.adam_betas)
        if isinstance(self.feature_modules, str):
            self.feature_modules = [self.feature_modules]
        elif isinstance(self.feature_modules, tuple):
            self.feature_modules = list(self.feature_modules)
        if isinstance(self.pseudo_sources, str):
            # a parser's text ("4", "none") as the field's type says; anything else is refused by validate
            self.pseudo_sources = from_text(self.pseudo_sources, PseudoSources)
        if isinstance(self.small_sources, (list, tuple)):
            self.small_sources = [str(s) for s in self.small_sources]
            if len(self.small_sources) == 1 and self.small_sources[0] in SMALL_SOURCE_RULES:
                self.small_sources = self.small_sources[0]  # a parser's list of one rule name
        self.validate()

    def validate(self) -> None:
        """ConfigError (a ValueError) naming the first field whose value is invalid."""

        def bad(name: str, expected: str) -> ConfigError:
            return ConfigError(name, expected, getattr(self, name))

        self.pool_factor = check_int("pool_factor", self.pool_factor, 1, owner="CoresetConfig")
        if isinstance(self.small_sources, str):
            if self.small_sources not in SMALL_SOURCE_RULES:
                raise bad("small_sources", f"one of {SMALL_SOURCE_RULES} or a list of source names")
        elif not isinstance(self.small_sources, list):
            raise bad("small_sources", f"one of {SMALL_SOURCE_RULES} or a list of source names")
        if self.within_source not in method_names():
            raise bad("within_source", f"one of {method_names()}")
        if self.loss_average not in LOSS_AVERAGES:
            raise bad("loss_average", f"one of {LOSS_AVERAGES}")
        if self.similarity not in SIMILARITIES:
            raise bad("similarity", f"one of {SIMILARITIES}")
        self.topk_dims = check_optional_int("topk_dims", self.topk_dims, 1, owner="CoresetConfig")
        if not isinstance(self.adam_normalize, bool):
            raise bad("adam_normalize", "true or false")
        if self.adam_second_moment not in SECOND_MOMENTS:
            raise bad("adam_second_moment", f"one of {SECOND_MOMENTS}")
        betas = self.adam_betas
        if not isinstance(betas, list) or len(betas) != 2 or not all(_is_number(b) and 0.0 <= b < 1.0 for b in betas):
            raise bad("adam_betas", "two numbers in [0, 1)")
        if not (_is_number(self.adam_eps) and self.adam_eps > 0):
            raise bad("adam_eps", "a number > 0")
        if self.feature not in feature_names():
            raise bad("feature", f"one of {feature_names()}")
        if self.feature == "full_adam" and self.adam_normalize:
            raise bad("adam_normalize", "false with feature='full_adam' (its features are already in the "
                      "optimizer's Adam space)")
        if not (_is_number(self.zo_eps) and self.zo_eps > 0):
            raise bad("zo_eps", "a number > 0")
        self.zo_probes = check_int("zo_probes", self.zo_probes, 1, owner="CoresetConfig")
        if self.feature_modules is not None and (
            len(self.feature_modules) == 0 or not all(isinstance(p, str) for p in self.feature_modules)
        ):
            raise bad("feature_modules", "None or a non-empty list of regular expressions")
        for pattern in self.feature_modules or []:  # compiled now, not at the first scoring step
            try:
                re.compile(pattern)
            except re.error as err:
                raise bad("feature_modules", f"regular expressions; {pattern!r} is not one ({err})") from None
        self.score_batch_size = check_optional_int("score_batch_size", self.score_batch_size, 1, owner="CoresetConfig")
        if self.selection_seed is not None:
            self.selection_seed = check_int("selection_seed", self.selection_seed, 0, owner="CoresetConfig")
        if not isinstance(self.weighted, bool):
            raise bad("weighted", "true or false")
        if self.pseudo_sources is not None and self.pseudo_sources != "auto":
            try:
                self.pseudo_sources = check_int("pseudo_sources", self.pseudo_sources, 2, owner="CoresetConfig")
            except ConfigError:
                raise bad("pseudo_sources", "None, 'auto' or an integer >= 2 (the number of clusters)") from None
        self.pseudo_source_warmup_steps = check_int(
            "pseudo_source_warmup_steps", self.pseudo_source_warmup_steps, 0, owner="CoresetConfig"
        )
        if self.pseudo_sources is not None and isinstance(self.small_sources, list):
            raise bad(
                "small_sources",
                "'below_mean' or 'none' with pseudo_sources: the pseudo-sources (cluster_0, "
                "cluster_1, ...) replace the named sources",
            )

    @property
    def needs_features(self) -> bool:
        """Whether selection looks at gradient features (False: no scoring pass is needed)."""
        return get_method(self.within_source).needs_features

    @property
    def effective_seed(self) -> int:
        """The seed in effect: ``selection_seed``, or 0 when it is unset (a CoresetTrainer sets
        it to the training seed first, see ``with_training_seed``)."""
        return 0 if self.selection_seed is None else self.selection_seed

    def with_training_seed(self, seed: int) -> "CoresetConfig":
        """This config with ``selection_seed`` defaulted to the training seed ``seed`` (itself
        when ``selection_seed`` is already set)."""
        if self.selection_seed is not None:
            return self
        return dataclasses.replace(self, selection_seed=seed)

    # --- serialization -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CoresetConfig":
        """The config a ``to_dict`` output (or a checkpoint's saved config, old field names
        included) describes."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known - set(RENAMED_FIELDS))
        if unknown:
            raise ConfigError(
                unknown[0], f"a CoresetConfig field (unknown field(s) {unknown}; known fields: {sorted(known)})",
                data[unknown[0]],
            )
        return cls(**data)

    @classmethod
    def field_docs(cls) -> dict[str, str]:
        """Field name -> its documentation (the CLI's --help text)."""
        return {f.name: f.metadata.get("help", "") for f in fields(cls)}


def current_field_names(data: dict[str, Any] | None) -> dict[str, Any] | None:
    """A saved config dict with renamed fields under their current names (``seed`` ->
    ``selection_seed``, ...), so a checkpoint of an older colm compares equal to the same
    config today. Other keys are left as they are."""
    if data is None:
        return None
    out = {RENAMED_FIELDS.get(k, k): v for k, v in data.items() if k not in RENAMED_FIELDS}
    for old, new in RENAMED_FIELDS.items():
        if old in data and new not in data:
            out[new] = data[old]
    return out


def _warn_renamed(old: str) -> None:
    warnings.warn(
        f"CoresetConfig.{old} is now {RENAMED_FIELDS[old]}; the old name is accepted until colm 0.3",
        RenamedWarning, stacklevel=4,
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
