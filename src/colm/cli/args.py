"""Options of `colm train`: dataclasses parsed by `transformers.HfArgumentParser`, optionally
pre-filled from a YAML file (flags win over YAML; the YAML side is colm.cli.yaml_config).

No `from __future__ import annotations` here: HfArgumentParser reads the real field types.
"""
import argparse
import dataclasses
import functools
import operator
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from colm.cli.errors import OneLineErrors, UsageError
from colm.config import CoresetConfig
from colm.data.arguments import DataArguments
from colm.errors import ConfigError, RenamedWarning
from colm.features.registry import feature_names
from colm.field_types import (
    NONE_WORDS,
    TextValueError,
    describe,
    from_text,
    option_types,
    shape,
    text_options,
    typed_values,
)
from colm.models.arguments import ModelArguments
from colm.selection.methods.registry import method_names

__all__ = ["DataArguments", "ModelArguments", "SelectionArguments"]


def _selection_arguments() -> type:
    """A dataclass mirroring CoresetConfig, with the same documentation.

    Built from CoresetConfig (colm.field_types.text_options) so a new field shows up in `--help`
    without editing the CLI; each option's text is converted by the field's type (the one
    converter, colm.field_types.from_text). What is left here is meaning, not types: the Adam
    settings default to the optimizer's, the methods' choices come from their registry, and the
    old option name of feature_modules still parses.
    """
    docs = CoresetConfig.field_docs()
    cls = text_options(
        CoresetConfig, "SelectionArguments",
        choices={"within_source": method_names(), "feature": feature_names()},  # from the registries
        # None: the optimizer's own (--adam-beta1/--adam-beta2/--adam-epsilon), as docs/method.md step 4 asks.
        defaults={"adam_betas": None, "adam_eps": None, "pseudo_sources": "none"},
        help={
            "topk_dims": docs["topk_dims"] + " ('none' keeps every coordinate.)",
            "pseudo_sources": docs["pseudo_sources"] + " ('none' = None.)",
            "adam_betas": docs["adam_betas"] + " Default: the optimizer's.",
            "adam_eps": docs["adam_eps"] + " Default: the optimizer's.",
            "selection_seed": docs["selection_seed"].replace("TrainingArguments.seed", "--seed"),
        },
        # the old name, until colm 0.3 (warned in parse_command)
        metadata={"feature_modules": {"aliases": list(OLD_OPTIONS)}},
        extra=[("no_coreset", bool, field(default=False, metadata={
            "help": "Train without selection (exactly like transformers.Trainer), for comparisons."}))],
    )
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
    try:
        values = typed_values(sel, CoresetConfig)
    except TextValueError as err:
        raise UsageError(f"{option_name(err.field)}: {err}") from None
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


# ------------------------------------------------------------------------ parser


class ColmArgumentParser:
    """Factory of HfArgumentParser subclasses whose errors raise UsageError (one line, exit 2)
    instead of printing usage and calling sys.exit."""

    @staticmethod
    def create(dataclass_types: Sequence[type], prog: str, description: str, usage: str | None = None):
        from transformers import HfArgumentParser

        class _Parser(OneLineErrors, HfArgumentParser):
            list_types: dict[str, Any] = {}

            def parse_known_args(self, args=None, namespace=None):  # noqa: D401 - argparse hook
                # A list option's tokens were converted one by one; the list as a whole may mean
                # None (`--sources none`) or be the scalar of a `str | list[str]` type.
                ns, rest = super().parse_known_args(args, namespace)
                for dest, kind in self.list_types.items():
                    value = getattr(ns, dest, None)
                    if isinstance(value, list):
                        setattr(ns, dest, from_text(value, kind))
                return ns, rest

        parser = _Parser(
            dataclass_types, prog=prog, description=description, allow_abbrev=False, usage=usage,
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        convert_option_text(parser, dataclass_types)
        return parser


def convert_option_text(parser: argparse.ArgumentParser, dataclass_types: Sequence[type]) -> None:
    """Make colm.field_types.from_text convert every option of colm's own dataclasses (and any
    other but transformers' and TRL's, which HfArgumentParser types as they expect), by the
    field's type. A bad value is an argparse error naming the option and what was expected."""
    kinds: dict[str, Any] = {}
    defaults: dict[str, Any] = {}
    for cls in dataclass_types:
        if converts_text(cls):
            kinds.update(option_types(cls))
            defaults.update((f.name, f.default) for f in dataclasses.fields(cls)
                            if f.default is not dataclasses.MISSING)
    list_types = {}
    for action in parser._actions:
        kind = kinds.get(action.dest)
        if kind is not None and kind is not bool and action.type is not None and action.nargs != 0:
            action.type = _OptionText(kind)
            if shape(kind).is_list:
                list_types[action.dest] = kind
            if action.default is None:  # HfArgumentParser drops a list option's plain default
                action.default = defaults.get(action.dest)
    parser.list_types = list_types  # type: ignore[attr-defined]


def converts_text(cls: type) -> bool:
    """Whether from_text converts the options of `cls` (not TrainingArguments and its kin)."""
    return not any(c.__module__.split(".")[0] in ("transformers", "trl") for c in cls.__mro__)


class _OptionText:
    """argparse `type=` of one option: each token (a list's item by item) through from_text."""

    def __init__(self, kind: Any) -> None:
        self.kind = kind
        self.shape = shape(kind)
        self.__name__ = describe(kind)

    def __call__(self, text: str) -> Any:
        if self.shape.is_list:
            if self.shape.optional and text.strip().lower() in NONE_WORDS:
                return text  # the whole list means None (the parser converts the list at the end)
            item = functools.reduce(operator.or_, self.shape.items)
            try:
                return from_text(text, item)
            except TextValueError:
                raise argparse.ArgumentTypeError(f"expected {describe(self.kind)}, got {text!r}") from None
        try:
            return from_text(text, self.kind)
        except TextValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None


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
