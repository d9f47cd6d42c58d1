"""`--config FILE.yaml`: a YAML mapping of options, turned into command-line tokens so argparse
converts and checks each value exactly as it does a flag.

Every error names the file and line: YAML that does not parse, a top level that is not a
mapping, an unknown key (with the closest known option), an option given twice (a duplicate key,
`max_steps` and `max-steps`, or the same field at the top level and under `coreset:`), a `null`
for an option that has no "unset" value, and a value the option does not accept.

The file is read with limits, since a config is small and a YAML file can make a parser do
unbounded work: at most MAX_BYTES, MAX_VALUES values once aliases are expanded (a few hundred
bytes of nested aliases otherwise expand to gigabytes), MAX_DEPTH levels of nesting, and only
the tags of plain values (no `!!python/...`, which the safe loader refuses anyway, now as bad
input rather than a crash).
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from colm.cli.errors import UsageError
from colm.config import RENAMED_FIELDS, CoresetConfig
from colm.errors import RenamedWarning
from colm.field_types import NONE_WORDS, option_types, shape

#: Mappings whose keys are CoresetConfig field names.
SELECTION_SECTIONS = ("coreset", "selection")
#: Limits on what a config file may hold (far above any real config: the options number ~150).
MAX_BYTES = 1 << 20
MAX_VALUES = 10_000
MAX_DEPTH = 16
#: Tags of plain YAML values; anything else (python objects, custom `!tags`) is refused.
SAFE_TAGS = frozenset(f"tag:yaml.org,2002:{t}" for t in (
    "str", "int", "float", "bool", "null", "seq", "map", "merge", "timestamp"))


def load_yaml_options(path: str, parser: argparse.ArgumentParser) -> list[str]:
    """The command-line tokens a YAML config file stands for.

    Under `coreset:`, a renamed CoresetConfig field's old name (`seed`, `target_modules`) is
    read as the new one with a FutureWarning. `null` leaves an option whose default is unset as
    it is; for any other option it is an error, since it would otherwise end as a None where a
    number is needed.
    """
    import yaml

    file = Path(path).expanduser()
    if not file.is_file():
        raise UsageError(f"{path}: config file not found")
    if file.stat().st_size > MAX_BYTES:
        raise UsageError(f"{path}: {file.stat().st_size} bytes; a config file may hold at most {MAX_BYTES}")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UsageError(f"{path}: not UTF-8 text ({err.reason})") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else path
        problem = getattr(err, "problem", None) or str(err)
        raise UsageError(f"{where}: invalid YAML: {' '.join(str(problem).split())}") from None
    if root is None:
        return []
    check_limits(root, path)
    if not isinstance(root, yaml.MappingNode):
        raise UsageError(f"{path}:{root.start_mark.line + 1}: expected a mapping of option: value")
    dests = _dest_actions(parser)
    tokens: list[str] = []
    seen: dict[str, str] = {}  # dest -> where it was first given, for the duplicate message
    for key, dest, section, value_node, line in _entries(root, path):
        if dest not in dests:
            close = difflib.get_close_matches(dest, list(dests), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UsageError(f"{path}:{line}: unknown key {key!r}{hint}")
        here = f"line {line}" + (f" (under {section}:)" if section else "")
        if dest in seen:
            raise UsageError(
                f"{path}:{line}: {key} is given twice ({seen[dest]} and {here}); keep one"
            )
        seen[dest] = here
        action = dests[dest]
        value = yaml.safe_load(yaml.serialize(value_node))
        if value is None:
            default = parser.get_default(dest)
            if default is None:
                continue  # unset is this option's default
            if action.none_token is not None:  # e.g. topk_dims: null keeps every coordinate
                tokens += [action.flag, action.none_token]
                continue
            raise UsageError(
                f"{path}:{line}: {key}: null is not a value of this option (expected "
                f"{_expected(action, default)}); leave the key out to use the default ({default!r})"
            )
        mine = _tokens(action, value, f"{path}:{line}: {key}")
        try:  # check this one value now, so an error can name its line
            parser.parse_known_args(mine)
        except UsageError as err:
            raise UsageError(f"{path}:{line}: {key}: {str(err).split(' (see ')[0]}") from None
        tokens += mine
    return tokens


def check_limits(root: Any, path: str) -> None:
    """Refuse a node graph beyond MAX_VALUES (aliases counted every time they are used),
    MAX_DEPTH, or with a tag outside SAFE_TAGS, naming the line where the limit is crossed."""
    import yaml

    stack = [(root, 1)]
    seen = 0
    while stack:
        node, depth = stack.pop()
        line = node.start_mark.line + 1
        seen += 1
        if seen > MAX_VALUES:
            raise UsageError(f"{path}:{line}: more than {MAX_VALUES} values once its aliases are "
                             "expanded; a config file needs far fewer (is an alias nested in itself?)")
        if depth > MAX_DEPTH:
            raise UsageError(f"{path}:{line}: nested more than {MAX_DEPTH} levels deep")
        if node.tag not in SAFE_TAGS:
            raise UsageError(f"{path}:{line}: the YAML tag {node.tag!r} is not allowed; a config "
                             "holds plain values (text, numbers, true/false, lists and mappings)")
        if isinstance(node, yaml.SequenceNode):
            stack.extend((child, depth + 1) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                stack += [(key, depth + 1), (value, depth + 1)]


def _entries(root: Any, path: str) -> Iterator[tuple[str, str, str | None, Any, int]]:
    """(key as written, option dest, section or None, value node, line) of every option;
    `coreset:`/`selection:` sections hold CoresetConfig field names."""
    import yaml

    fields = {f.name for f in dataclasses.fields(CoresetConfig)}
    for key_node, value_node in root.value:
        key = str(key_node.value)
        line = key_node.start_mark.line + 1
        if key not in SELECTION_SECTIONS:
            yield key, key.replace("-", "_"), None, value_node, line
            continue
        if not isinstance(value_node, yaml.MappingNode):
            raise UsageError(f"{path}:{line}: {key}: expected a mapping of CoresetConfig fields")
        for k, v in value_node.value:
            name = str(k.value).replace("-", "_")
            k_line = k.start_mark.line + 1
            if name in RENAMED_FIELDS:
                warnings.warn(f"{path}:{k_line}: {key}: {k.value!r} is now {RENAMED_FIELDS[name]!r}; the old "
                              "name is accepted until colm 0.3", RenamedWarning, stacklevel=2)
                name = RENAMED_FIELDS[name]
            if name not in fields:
                close = difflib.get_close_matches(name, sorted(fields), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else "; training options go at the top level"
                raise UsageError(f"{path}:{k_line}: {key}: {k.value!r} is not a CoresetConfig field{hint}")
            yield str(k.value), name, key, v, k_line


@dataclasses.dataclass(frozen=True)
class _Option:
    """What a YAML value of one option must become on the command line (from the dataclass
    field that defines the option: HfArgumentParser makes one `--name` option per field).
    `none_token`: the text that means None for an option whose type allows it (colm's own
    options, converted by colm.field_types), where `null` is not the default."""

    flag: str
    is_list: bool
    choices: tuple[Any, ...]
    none_token: str | None = None


def _dest_actions(parser: Any) -> dict[str, _Option]:
    """dest -> option, for every field of the dataclasses the parser was built from; each
    field's type read by colm.field_types.shape."""
    from colm.cli.args import converts_text

    out: dict[str, _Option] = {}
    for cls in getattr(parser, "dataclass_types", ()):
        kinds = option_types(cls)
        for f in dataclasses.fields(cls):
            if not f.init or f.name.startswith("_"):
                continue
            s = shape(kinds.get(f.name, Any))
            choices = tuple(f.metadata.get("choices", ())) or s.choices
            none = NONE_WORDS[0] if s.optional and converts_text(cls) else None
            out.setdefault(f.name, _Option(f"--{f.name}", s.is_list, choices, none))
    return out


def _expected(action: _Option, default: Any) -> str:
    if action.choices:
        return "one of " + ", ".join(str(c) for c in action.choices)
    if isinstance(default, bool):
        return "true or false"
    if isinstance(default, (int, float)):
        return "a number"
    if isinstance(default, (list, tuple)):
        return "a list"
    return "a value"


def _tokens(action: _Option, value: Any, where: str) -> list[str]:
    option = action.flag
    if isinstance(value, bool):
        return [option, "true" if value else "false"]
    if isinstance(value, list):
        if not action.is_list:
            raise UsageError(f"{where}: expected a single value, got a list")
        if not value:
            raise UsageError(f"{where}: expected at least one value, got an empty list")
        return [option, *(json.dumps(v) if isinstance(v, (dict, list)) else str(v) for v in value)]
    if isinstance(value, dict):
        return [option, json.dumps(value)]
    return [option, str(value)]
