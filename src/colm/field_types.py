"""From text to a dataclass field's value, driven by the field's type: the one converter every
reader of options uses (command-line flags, `--config` YAML files, CoresetConfig given text,
colm's on/off environment variables through `env_switch`).

    from_text("4", int | None)              -> 4
    from_text("none", int | None)           -> None
    from_text(["a", "b"], list[str] | None) -> ["a", "b"]
    from_text("auto", int | str | None)     -> "auto"   (the members are tried in order, str last)

`text_options(cls)` mirrors a dataclass as one whose fields hold the text an argument parser
reads (bool stays bool, sequences become list[str], everything else str, with the choices of a
Literal or of the field's metadata), and `typed_values(options, cls)` converts such an object
back into the field values of `cls`. A new `int | None` or `list[str] | None` field of `cls`
then needs no special case anywhere.

Imports only the standard library (colm.config uses it).
"""
from __future__ import annotations

import dataclasses
import enum
import os
import types
import typing
from collections.abc import Sequence
from typing import Any, Literal

#: Text that means None for a field that may be None.
NONE_WORDS = ("none", "null", "")
TRUE_WORDS = ("true", "yes", "1", "on")
FALSE_WORDS = ("false", "no", "0", "off")


class TextValueError(ValueError):
    """Text that is not a value of the field's type; `expected` says what would be."""

    def __init__(self, text: Any, expected: str, field: str = "") -> None:
        self.text, self.expected, self.field = text, expected, field
        super().__init__(f"expected {expected}, got {text!r}")


@dataclasses.dataclass(frozen=True)
class Shape:
    """What a field's type asks of its text: None allowed; the types one value may have
    (`scalars`, tried in order, str last); the types of a list's items (`items`, empty when the
    type has no list); the allowed values when the type names them (Literal, Enum)."""

    optional: bool
    scalars: tuple[Any, ...]
    items: tuple[Any, ...]
    choices: tuple[Any, ...]

    @property
    def is_list(self) -> bool:
        return bool(self.items)


def shape(kind: Any) -> Shape:
    """The Shape of a type annotation (X | None, list[X], tuple[X, ...], Literal[...], Enum, a
    union of those)."""
    if kind is Any:
        return Shape(True, (str,), (), ())
    members = typing.get_args(kind) if typing.get_origin(kind) in (typing.Union, types.UnionType) else (kind,)
    scalars: list[Any] = []
    items: list[Any] = []
    for m in members:
        if m is type(None):
            continue
        if typing.get_origin(m) in (list, tuple, Sequence) or m in (list, tuple):
            items.extend(a for a in typing.get_args(m) or (str,) if a is not Ellipsis)
        else:
            scalars.append(m)
    choices: list[Any] = []
    for m in scalars or items:
        if typing.get_origin(m) is Literal:
            choices.extend(typing.get_args(m))
        elif isinstance(m, type) and issubclass(m, enum.Enum):
            choices.extend(e.value for e in m)
        else:  # a free type among them: no fixed set of values
            choices = []
            break
    return Shape(type(None) in members, tuple(scalars), tuple(items), tuple(choices))


def describe(kind: Any) -> str:
    """What a value of `kind` is, in words ("an integer or none")."""
    s = shape(kind)
    words = [_describe(m) for m in s.scalars]
    if s.items:
        item = " or ".join(dict.fromkeys(_describe(m) for m in s.items))
        words.append(f"a list of ({item})" if len(s.items) > 1 else f"a list of {_PLURAL.get(item, item)}")
    text = " or ".join(dict.fromkeys(words))
    return text + " or none" if s.optional else text


_PLURAL = {"an integer": "integers", "a number": "numbers", "a text": "texts", "true or false": "true/false"}


def _describe(m: Any) -> str:
    if typing.get_origin(m) is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(m)))
    if isinstance(m, type) and issubclass(m, enum.Enum):
        return "one of " + ", ".join(str(e.value) for e in m)
    return {bool: "true or false", int: "an integer", float: "a number", str: "a text"}.get(
        m, getattr(m, "__name__", str(m)))


def from_text(value: Any, kind: Any) -> Any:
    """`value` (a text, a list of texts, or a value already of the type) as a value of `kind`.
    Raises TextValueError saying what was expected."""
    texts = isinstance(value, list) and all(isinstance(v, str) for v in value)
    if not isinstance(value, str) and not texts:
        return value  # already typed (a default, or a value given from Python)
    s = shape(kind)
    if s.optional and _means_none(value):
        return None
    try:
        if isinstance(value, list):
            if s.items:
                return [_one(v, s.items) for v in value]
            if len(value) == 1:  # a parser's list of one, for a scalar
                return _one(value[0], s.scalars)
            raise ValueError(value)
        if s.scalars:
            return _one(value, s.scalars)
        return [_one(value, s.items)]  # one text for a list: a list of one
    except (ValueError, TypeError):
        raise TextValueError(value, describe(kind)) from None


def _means_none(value: Any) -> bool:
    if isinstance(value, list):  # ['none'] is None; [''] is one empty name, which the option's
        # reader refuses by name (`--sources ''` names no source) rather than reading as "all"
        return len(value) == 1 and value[0].strip() != "" and _means_none(value[0])
    return value.strip().lower() in NONE_WORDS


def _one(text: str, members: Sequence[Any]) -> Any:
    # str accepts anything: tried last, so "4" is an int where int is allowed.
    for member in sorted(members, key=lambda m: m is str or m is Any):
        try:
            return _convert(text, member)
        except (ValueError, TypeError):
            continue
    raise ValueError(text)


def _convert(text: str, member: Any) -> Any:
    if typing.get_origin(member) is Literal:
        for choice in typing.get_args(member):
            if str(choice) == text.strip():
                return choice
        raise ValueError(text)
    if isinstance(member, type) and issubclass(member, enum.Enum):
        return member(text.strip())
    if member is bool:
        word = text.strip().lower()
        if word in TRUE_WORDS or word in FALSE_WORDS:
            return word in TRUE_WORDS
        raise ValueError(text)
    if member is int:
        return int(text.strip())
    if member is float:
        return float(text.strip())
    if member is str or member is Any:
        return text
    raise TypeError(f"no text conversion to {member!r}")


def env_switch(name: str, default: bool) -> bool:
    """An on/off environment variable, read as a bool option's text (true/yes/1/on,
    false/no/0/off); unset, empty or any other text: `default`."""
    text = os.environ.get(name, "")
    try:
        return bool(from_text(text, bool)) if text.strip() else default
    except TextValueError:
        return default


# ------------------------------------------------------------------ dataclass mirrors


def field_types(cls: type) -> dict[str, Any]:
    """{field name: resolved type} of a dataclass."""
    return typing.get_type_hints(cls)


def text_options(cls: type, name: str, *, choices: dict[str, Sequence[str]] | None = None,
                 defaults: dict[str, Any] | None = None, help: dict[str, str] | None = None,
                 metadata: dict[str, dict[str, Any]] | None = None,
                 extra: Sequence[tuple[str, Any, Any]] = ()) -> type:
    """A dataclass `name` with one field per init field of `cls`, of a type an argument parser
    reads as it is: bool stays bool (a flag), a type with a list becomes list[str] | None, any
    other str (| None when its default is None).

    Choices come from `choices`, the field's metadata or its Literal/Enum type; defaults are
    those of `cls` unless `defaults` gives one; help texts those of the field's metadata unless
    `help` gives one; `metadata` adds keys (e.g. argparse aliases); `extra` fields (name, type,
    dataclasses.field) are appended. The class attribute `text_types` maps each mirrored field to
    the type its text converts to (see `option_types`), for `typed_values`, the CLI's option
    types and the YAML reader. (Not in the fields' metadata: HfArgumentParser hands all of it
    to argparse.)"""
    hints = field_types(cls)
    specs: list[tuple[str, Any, Any]] = []
    for f in dataclasses.fields(cls):
        if not f.init or f.name.startswith("_"):
            continue
        kind = hints[f.name]
        s = shape(kind)
        meta: dict[str, Any] = {"help": (help or {}).get(f.name, f.metadata.get("help", ""))}
        meta.update((metadata or {}).get(f.name, {}))
        options = (choices or {}).get(f.name) or f.metadata.get("choices") or s.choices
        if options:
            meta["choices"] = [str(c) for c in options]
        if defaults is not None and f.name in defaults:
            default: Any = defaults[f.name]
        elif f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        if kind is bool:
            typ: Any = bool
        elif s.is_list:
            typ = list[str] | None
            if default is not None and not isinstance(default, list):
                default = [default]
        else:
            typ = str | None if default is None else str
        if isinstance(default, list):
            spec = dataclasses.field(default_factory=lambda d=list(default): list(d), metadata=meta)
        else:
            spec = dataclasses.field(default=default, metadata=meta)
        specs.append((f.name, typ, spec))
    mirror = dataclasses.make_dataclass(name, [*specs, *extra])
    mirror.text_types = {n: hints[n] for n, _, _ in specs}  # type: ignore[attr-defined]
    return mirror


def option_types(cls: type) -> dict[str, Any]:
    """{field: the type its text converts to}: a `text_options` mirror's `text_types`, else the
    dataclass's own field types."""
    return dict(getattr(cls, "text_types", None) or field_types(cls))


def typed_values(options: Any, cls: type) -> dict[str, Any]:
    """{field: value of its type} of a `text_options(cls)` object. TextValueError names the field."""
    hints = field_types(cls)  # of cls itself: the mirror's fields are text
    values = {}
    for f in dataclasses.fields(cls):
        if not f.init or f.name.startswith("_") or not hasattr(options, f.name):
            continue
        try:
            values[f.name] = from_text(getattr(options, f.name), hints[f.name])
        except TextValueError as err:
            err.field = f.name
            raise
    return values
