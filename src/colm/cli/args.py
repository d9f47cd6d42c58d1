"""Options of `colm train`: dataclasses parsed by `transformers.HfArgumentParser`, optionally
pre-filled from a YAML file (flags win over YAML; the YAML side is colm.cli.yaml_config).

No `from __future__ import annotations` here: HfArgumentParser reads the real field types.
"""
import argparse
import dataclasses
import typing
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from colm.cli.errors import OneLineErrors, UsageError
from colm.config import CoresetConfig
from colm.data.arguments import DataArguments
from colm.errors import ConfigError, RenamedWarning
from colm.models.arguments import ModelArguments
from colm.selection.methods.registry import method_names

__all__ = ["DataArguments", "ModelArguments", "SelectionArguments"]


def _selection_arguments() -> type:
    """A dataclass mirroring CoresetConfig, with the same documentation.

    Built from CoresetConfig so a new field shows up in `--help` without editing the CLI. Types
    the argument parser cannot express (None-or-int, str-or-list) are read as strings and
    converted by `to_coreset_config`, which names the option on a bad value.
    """
    docs = CoresetConfig.field_docs()
    defaults = CoresetConfig()
    hints = typing.get_type_hints(CoresetConfig)  # Literal[...] fields become choices
    specs: list[tuple[str, Any, Any]] = []
    for f in dataclasses.fields(CoresetConfig):
        name = f.name
        default = getattr(defaults, f.name)
        help_text = docs.get(f.name, "")
        factory = None
        meta: dict[str, Any] = {}
        if f.name == "topk_dims":
            typ, value = str, "none" if default is None else str(default)
            help_text += " ('none' keeps every coordinate.)"
        elif f.name == "pseudo_sources":
            typ, value = str, "none"
            help_text += " ('none' = None.)"
        elif f.name == "small_sources":
            typ, value = list[str], None
            factory = lambda d=default: [d] if isinstance(d, str) else list(d)  # noqa: E731
        elif f.name in ("adam_betas", "adam_eps"):
            # None: the optimizer's own (--adam-beta1/--adam-beta2/--adam-epsilon), as docs/method.md step 4 asks.
            typ = list[float] | None if f.name == "adam_betas" else float | None
            value = None
            help_text += " Default: the optimizer's."
        elif f.name == "feature_modules":
            typ, value = list[str] | None, None
            meta["aliases"] = list(OLD_OPTIONS)  # the old name, until colm 0.3 (warned in parse_command)
        elif f.name in ("score_batch_size", "selection_seed"):
            typ, value = int | None, None
            if f.name == "selection_seed":
                help_text = help_text.replace("TrainingArguments.seed", "--seed")
        elif f.name == "within_source":  # choices from the registry of methods
            typ, value = str, default
            meta["choices"] = list(method_names())
        else:
            literal = typing.get_origin(hints[f.name]) is typing.Literal
            typ, value = (hints[f.name] if literal else type(default)), default
        meta["help"] = help_text
        spec = field(default_factory=factory, metadata=meta) if factory else field(default=value, metadata=meta)
        specs.append((name, typ, spec))
    specs.append((
        "no_coreset", bool,
        field(default=False, metadata={"help": "Train without selection (exactly like "
                                               "transformers.Trainer), for comparisons."}),
    ))
    cls = dataclasses.make_dataclass("SelectionArguments", specs)
    cls.__doc__ = "CoresetConfig, as command-line options."
    cls._argument_group_name = "selection (colm.CoresetConfig)"
    return cls


#: Options of renamed CoresetConfig fields that still parse (with a FutureWarning).
OLD_OPTIONS = ("--target-modules", "--target_modules")
SelectionArguments = _selection_arguments()


def training_arguments_class() -> type:
    """TrainingArguments with its own --help section (imports transformers: call lazily).

    `report_to` is retyped as a list: TrainingArguments types it `str | list[str]`, which
    HfArgumentParser (and so the YAML reader) takes as one string, so `--report-to tensorboard
    wandb` and a YAML list were refused. TrainingArguments accepts the list as it is."""
    from transformers import TrainingArguments

    help_text = next(f.metadata.get("help", "") for f in dataclasses.fields(TrainingArguments) if f.name == "report_to")

    @dataclass
    class TrainingOptions(TrainingArguments):
        _argument_group_name = "training (transformers.TrainingArguments)"

        report_to: list[str] | None = field(
            default=None,
            metadata={"help": help_text + " Several integrations: `--report-to tensorboard wandb`, "
                                          "or a YAML list."},
        )

    return TrainingOptions


def as_plain_training_arguments(targs: Any) -> None:
    """Turn parsed TrainingOptions into plain TrainingArguments, in place.

    The subclass only gave --help its section title; Trainer pickles its args into every
    checkpoint (training_args.bin), so hand it the plain class (same fields and layout)."""
    from transformers import TrainingArguments

    targs.__class__ = TrainingArguments


def to_coreset_config(sel: Any, training_args: Any = None) -> CoresetConfig | None:
    """The CoresetConfig the selection options describe; None with --no-coreset.

    Raises UsageError naming the option when a value is invalid.
    """
    if sel.no_coreset:
        return None
    values: dict[str, Any] = {}
    for f in dataclasses.fields(CoresetConfig):
        values[f.name] = getattr(sel, f.name)
    topk = str(values["topk_dims"]).strip().lower()
    if topk in ("none", "all", "null", ""):
        values["topk_dims"] = None
    else:
        try:
            values["topk_dims"] = int(topk)
        except ValueError:
            raise UsageError(f"--topk-dims: expected an integer or 'none', got {topk!r}") from None
    values["pseudo_sources"] = _pseudo_sources(values["pseudo_sources"])
    values["small_sources"] = list(values["small_sources"])  # one rule name: CoresetConfig unwraps it
    if values["selection_seed"] is None and training_args is not None:
        values["selection_seed"] = training_args.seed  # written into the run's saved config
    if values["adam_betas"] is None:
        values["adam_betas"] = (
            (training_args.adam_beta1, training_args.adam_beta2) if training_args else (0.9, 0.999)
        )
    if values["adam_eps"] is None:
        values["adam_eps"] = training_args.adam_epsilon if training_args else 1e-8
    try:
        return CoresetConfig(**values)
    except ConfigError as err:  # name the option the user typed
        raise UsageError(f"{option_name(err.field)}: {err}") from None


def option_name(field_name: str) -> str:
    """The `colm train` option of a CoresetConfig field: `feature_modules` -> `--feature-modules`."""
    return "--" + field_name.replace("_", "-")


def _warn_old_options(tokens: Sequence[str]) -> None:
    for token in tokens:
        if token.split("=", 1)[0] in OLD_OPTIONS:
            warnings.warn("--target-modules is now --feature-modules; the old name is accepted until colm 0.3",
                          RenamedWarning, stacklevel=3)
            return


def _pseudo_sources(text: Any) -> Any:
    """--pseudo-sources: 'none' -> None, 'auto', or a number of clusters (checked by CoresetConfig)."""
    value = str(text).strip().lower()
    if value in ("none", "null", ""):
        return None
    if value == "auto":
        return "auto"
    try:
        return int(value)
    except ValueError:
        raise UsageError(
            f"--pseudo-sources: expected a number of clusters (an integer >= 2), 'auto' or 'none', got {text!r}"
        ) from None


# ------------------------------------------------------------------------ parser


class ColmArgumentParser:
    """Factory of HfArgumentParser subclasses whose errors raise UsageError (one line, exit 2)
    instead of printing usage and calling sys.exit."""

    @staticmethod
    def create(dataclass_types: Sequence[type], prog: str, description: str, usage: str | None = None):
        from transformers import HfArgumentParser

        class _Parser(OneLineErrors, HfArgumentParser):
            pass

        return _Parser(
            dataclass_types, prog=prog, description=description, allow_abbrev=False, usage=usage,
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )


def add_config_option(parser: argparse.ArgumentParser) -> None:
    """--config FILE.yaml (read before the other options, which override it)."""
    parser.add_argument(
        "--config", metavar="FILE.yaml", default=None,
        help="YAML file of options (keys are option names, with _ or -); flags given on the "
             "command line override it. A `coreset:` mapping may hold CoresetConfig fields.",
    )


def split_config_flag(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """Pull `--config PATH` / `--config=PATH` out of argv (the last one wins)."""
    rest: list[str] = []
    config = None
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config":
            if i + 1 >= len(argv):
                raise UsageError("--config: expected a YAML file path")
            config, i = argv[i + 1], i + 2
            continue
        if arg.startswith("--config="):
            config = arg.split("=", 1)[1]
        else:
            rest.append(arg)
        i += 1
    return config, rest


def parse_command(
    parser: argparse.ArgumentParser, argv: Sequence[str], n_dataclasses: int
) -> tuple[Any, ...]:
    """Parse YAML (if --config) then argv into the parser's dataclasses; flags override YAML."""
    from colm.cli.yaml_config import load_yaml_options

    config, rest = split_config_flag(list(argv))
    yaml_tokens: list[str] = []
    if config is not None:
        yaml_tokens = load_yaml_options(config, parser)
    try:
        outputs = parser.parse_args_into_dataclasses(
            args=yaml_tokens + rest, look_for_args_file=False, return_remaining_strings=True
        )
    except UsageError:
        raise
    except ValueError as err:
        # The dataclasses' own checks (TrainingArguments.__post_init__): option combinations.
        raise UsageError(" ".join(str(err).split())) from None
    _warn_old_options(yaml_tokens + rest)
    remaining = outputs[-1]
    if remaining:
        parser.error(f"unrecognized arguments: {' '.join(remaining)}")
    return tuple(outputs[:n_dataclasses])
