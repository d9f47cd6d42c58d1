"""CoresetConfig: every knob of the selection, typed, documented and validated.

One dataclass is shared by the selector (framework-free), the feature extractors and the trainer,
so a run is described by a single JSON-serializable object that is saved with checkpoints.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Sequence, Union, get_args

Similarity = Literal["l1", "l2", "cosine"]
FeatureKind = Literal["zo", "exact", "hidden", "full_adam"]
#: How a large source's share of the budget is filled (see ``CoresetConfig.within_source``).
WithinSource = Literal["facility_location", "random", "mean_match", "cluster_sample", "pps", "balanced", "nnls"]
LossAverage = Literal["token", "example"]
SecondMoment = Literal["per_example", "pool"]
SIMILARITIES = get_args(Similarity)
FEATURES = get_args(FeatureKind)
WITHIN_SOURCE = get_args(WithinSource)
LOSS_AVERAGES = get_args(LossAverage)
SECOND_MOMENTS = get_args(SecondMoment)
SMALL_SOURCE_RULES = ("below_mean", "none")
#: Of the within-source methods, those that look at no gradient feature (no scoring pass).
FEATURE_FREE = ("random",)


@dataclass
class CoresetConfig:
    """How colm picks the coreset it trains on at each optimizer step (docs/method.md, steps 1-8)."""

    pool_factor: int = field(default=2, metadata={"help": (
        "Pool size = pool_factor x the batch the optimizer steps on. 1 disables selection."
    )})

    small_sources: Union[str, Sequence[str]] = field(default="below_mean", metadata={"help": (
        "Which sources are kept whole: 'below_mean' (dataset-level size below the mean source "
        "size, the paper's rule), 'none', or an explicit list of source names."
    )})

    within_source: WithinSource = field(default="random", metadata={"help": (
        "How each large source's share of the budget is filled. Default 'random': in colm's "
        "measurements no gradient-based method trained better than it, and it costs no "
        "scoring pass (docs/benchmarks.md). 'facility_location': the "
        "paper's medoids of the source's pool rows in the normalized, sparsified feature space. "
        "'random': uniformly at random without replacement, seeded by (seed, step): the "
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

    adam_betas: tuple[float, float] = field(default=(0.9, 0.999), metadata={"help": (
        "Betas of the Adam history used for normalization (should equal the optimizer's)."
    )})

    adam_eps: float = field(default=1e-8, metadata={"help": (
        "Epsilon of the Adam normalization (should equal the optimizer's)."
    )})

    feature: FeatureKind = field(default="exact", metadata={"help": (
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

    target_modules: tuple[str, ...] | None = field(default=None, metadata={"help": (
        "Regular expressions over parameter names selecting the target parameters. None: the "
        "value projection of the last decoder layer (its LoRA B when a LoRA adapter is "
        "present)."
    )})

    weighted: bool = field(default=False, metadata={"help": (
        "Weight each selected example's loss by its cluster size (the paper trains uniform). "
        "Ignored by 'random' and 'mean_match' (uniform by design); 'pps' always weights."
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

    seed: int = field(default=0, metadata={"help": (
        "Seed of the probe directions and of every random choice the selection makes."
    )})

    pseudo_sources: Union[int, str, None] = field(default=None, metadata={"help": (
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

    def __post_init__(self) -> None:
        if isinstance(self.adam_betas, list):
            self.adam_betas = tuple(self.adam_betas)
        if isinstance(self.target_modules, str):
            self.target_modules = (self.target_modules,)
        elif isinstance(self.target_modules, list):
            self.target_modules = tuple(self.target_modules)
        if isinstance(self.small_sources, (list, tuple)):
            self.small_sources = [str(s) for s in self.small_sources]
        self.validate()

    def validate(self) -> None:
        def bad(name: str, expected: str) -> ValueError:
            return ValueError(
                f"CoresetConfig.{name} = {getattr(self, name)!r} is invalid: expected {expected}"
            )

        if not isinstance(self.pool_factor, int) or isinstance(self.pool_factor, bool) or self.pool_factor < 1:
            raise bad("pool_factor", "an integer >= 1")
        if isinstance(self.small_sources, str):
            if self.small_sources not in SMALL_SOURCE_RULES:
                raise bad("small_sources", f"one of {SMALL_SOURCE_RULES} or a list of source names")
        elif not isinstance(self.small_sources, list):
            raise bad("small_sources", f"one of {SMALL_SOURCE_RULES} or a list of source names")
        if self.within_source not in WITHIN_SOURCE:
            raise bad("within_source", f"one of {WITHIN_SOURCE}")
        if self.loss_average not in LOSS_AVERAGES:
            raise bad("loss_average", f"one of {LOSS_AVERAGES}")
        if self.similarity not in SIMILARITIES:
            raise bad("similarity", f"one of {SIMILARITIES}")
        if self.topk_dims is not None and (
            not isinstance(self.topk_dims, int) or isinstance(self.topk_dims, bool) or self.topk_dims < 1
        ):
            raise bad("topk_dims", "None or an integer >= 1")
        if not isinstance(self.adam_normalize, bool):
            raise bad("adam_normalize", "true or false")
        if self.adam_second_moment not in SECOND_MOMENTS:
            raise bad("adam_second_moment", f"one of {SECOND_MOMENTS}")
        if (
            len(self.adam_betas) != 2
            or not all(isinstance(b, (int, float)) and 0.0 <= b < 1.0 for b in self.adam_betas)
        ):
            raise bad("adam_betas", "two numbers in [0, 1)")
        if not (isinstance(self.adam_eps, (int, float)) and self.adam_eps > 0):
            raise bad("adam_eps", "a number > 0")
        if self.feature not in FEATURES:
            raise bad("feature", f"one of {FEATURES}")
        if self.feature == "full_adam" and self.adam_normalize:
            raise bad("adam_normalize", "false with feature='full_adam' (its features are already in the optimizer's Adam space)")
        if not (isinstance(self.zo_eps, (int, float)) and self.zo_eps > 0):
            raise bad("zo_eps", "a number > 0")
        if not isinstance(self.zo_probes, int) or isinstance(self.zo_probes, bool) or self.zo_probes < 1:
            raise bad("zo_probes", "an integer >= 1")
        if self.target_modules is not None and (
            len(self.target_modules) == 0 or not all(isinstance(p, str) for p in self.target_modules)
        ):
            raise bad("target_modules", "None or a non-empty list of regular expressions")
        if self.score_batch_size is not None and (
            not isinstance(self.score_batch_size, int) or self.score_batch_size < 1
        ):
            raise bad("score_batch_size", "None or an integer >= 1")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise bad("seed", "an integer")
        if not isinstance(self.weighted, bool):
            raise bad("weighted", "true or false")
        if self.pseudo_sources is not None and self.pseudo_sources != "auto" and (
            not isinstance(self.pseudo_sources, int) or isinstance(self.pseudo_sources, bool)
            or self.pseudo_sources < 2
        ):
            raise bad("pseudo_sources", "None, 'auto' or an integer >= 2 (the number of clusters)")
        if (
            not isinstance(self.pseudo_source_warmup_steps, int)
            or isinstance(self.pseudo_source_warmup_steps, bool)
            or self.pseudo_source_warmup_steps < 0
        ):
            raise bad("pseudo_source_warmup_steps", "an integer >= 0")
        if self.pseudo_sources is not None and isinstance(self.small_sources, list):
            raise bad(
                "small_sources",
                "'below_mean' or 'none' with pseudo_sources: the pseudo-sources (cluster_0, "
                "cluster_1, ...) replace the named sources",
            )

    @property
    def needs_features(self) -> bool:
        """Whether selection looks at gradient features (False: no scoring pass is needed)."""
        return self.within_source not in FEATURE_FREE

    # --- serialization -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["adam_betas"] = list(self.adam_betas)
        if self.target_modules is not None:
            out["target_modules"] = list(self.target_modules)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CoresetConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown CoresetConfig field(s) {unknown}; known fields: {sorted(known)}"
            )
        return cls(**data)

    @classmethod
    def field_docs(cls) -> dict[str, str]:
        """Field name -> its documentation (the CLI's --help text)."""
        return {f.name: f.metadata.get("help", "") for f in fields(cls)}
