"""colm.field_types: the one converter from text to a dataclass field's value, and the readers
that use it (command-line flags and `--config` YAML), on a toy dataclass whose fields no reader
knows by name."""
from __future__ import annotations

import dataclasses
from typing import Literal

import pytest

from colm.field_types import TextValueError, describe, from_text, shape


@dataclasses.dataclass
class Toy:
    """Fields of the kinds that used to need a special case in the CLI."""

    count: int | None = None
    names: list[str] | None = None
    ratio: float = 0.5
    mode: Literal["fast", "slow"] = "fast"
    clusters: int | str | None = None  # an integer, a word, or unset (like pseudo_sources)
    rule_or_names: str | list[str] = "below_mean"
    limit: int | None = 7
    flag: bool = False


@pytest.mark.parametrize("text, kind, expected", [
    ("4", int | None, 4),
    ("none", int | None, None),
    ("NULL", int | None, None),
    (["a", "b"], list[str] | None, ["a", "b"]),
    (["none"], list[str] | None, None),
    ([""], list[str] | None, [""]),  # one empty name, refused by its reader (`--sources ''`), not "all"
    ("a", list[str] | None, ["a"]),
    (["0.9", "0.99"], list[float], [0.9, 0.99]),
    ("auto", int | str | None, "auto"),
    ("12", int | str | None, 12),
    ("slow", Literal["fast", "slow"], "slow"),
    ("true", bool, True),
    ("off", bool, False),
    ("1e-3", float, 1e-3),
    (["below_mean"], str | list[str], ["below_mean"]),
    (5, int | None, 5),  # already typed: as it is
])
def test_text_becomes_a_value_of_the_fields_type(text, kind, expected):
    assert from_text(text, kind) == expected


@pytest.mark.parametrize("text, kind, needle", [
    ("many", int | None, "an integer or none"),
    ("1.5", int, "an integer"),
    ("medium", Literal["fast", "slow"], "one of fast, slow"),
    (["1", "x"], list[int], "a list of integers"),
    (["a", "b"], int, "an integer"),
    ("maybe", bool, "true or false"),
])
def test_text_that_is_not_a_value_says_what_was_expected(text, kind, needle):
    with pytest.raises(TextValueError, match=needle):
        from_text(text, kind)


def test_shape_reads_optional_lists_and_choices():
    assert shape(list[str] | None).optional and shape(list[str] | None).is_list
    assert shape(Literal["a", "b"]).choices == ("a", "b")
    assert not shape(int).optional and not shape(int).is_list
    assert describe(int | str | None) == "an integer or a text or none"


def _toy_parser():
    from colm.cli.args import ColmArgumentParser

    return ColmArgumentParser.create([Toy], prog="toy", description="a toy")


def test_a_toy_dataclasss_optional_fields_parse_from_the_command_line():
    parser = _toy_parser()
    (toy,) = parser.parse_args_into_dataclasses(
        ["--count", "3", "--names", "x", "y", "--clusters", "auto", "--limit", "none", "--mode", "slow"])
    assert toy == Toy(count=3, names=["x", "y"], clusters="auto", limit=None, mode="slow")
    (toy,) = parser.parse_args_into_dataclasses(["--clusters", "8", "--names", "none"])
    assert toy.clusters == 8 and toy.names is None and toy.count is None and toy.limit == 7


def test_a_toy_dataclasss_bad_value_names_the_option_and_what_was_expected():
    from colm.cli.errors import UsageError

    with pytest.raises(UsageError, match=r"--count: expected an integer or none, got 'many'"):
        _toy_parser().parse_args_into_dataclasses(["--count", "many"])


def test_a_toy_dataclasss_optional_fields_parse_from_yaml(tmp_path):
    from colm.cli.yaml_config import load_yaml_options

    config = tmp_path / "toy.yaml"
    config.write_text("count: 4\nnames: [a, b]\nlimit: null\nclusters: auto\nrule_or_names: [x]\n", encoding="utf-8")
    parser = _toy_parser()
    (toy,) = parser.parse_args_into_dataclasses(load_yaml_options(str(config), parser))
    assert toy == Toy(count=4, names=["a", "b"], limit=None, clusters="auto", rule_or_names=["x"])


def test_a_toy_dataclasss_bad_yaml_value_names_the_file_and_line(tmp_path):
    from colm.cli.errors import UsageError
    from colm.cli.yaml_config import load_yaml_options

    config = tmp_path / "toy.yaml"
    config.write_text("ratio: 0.1\ncount: lots\n", encoding="utf-8")
    with pytest.raises(UsageError, match=rf"{config}:2: count: .*expected an integer or none, got 'lots'"):
        load_yaml_options(str(config), _toy_parser())


@pytest.mark.parametrize("text, expected", [
    (None, True), ("", True), ("0", False), ("off", False), ("No", False), ("1", True), ("yes", True),
    ("maybe", True),  # unknown text: the default, as the switches always read it
])
def test_an_environment_switch_reads_its_text_as_a_bool_option_does(monkeypatch, text, expected):
    from colm.field_types import env_switch

    if text is None:
        monkeypatch.delenv("COLM_TEST_SWITCH", raising=False)
    else:
        monkeypatch.setenv("COLM_TEST_SWITCH", text)
    assert env_switch("COLM_TEST_SWITCH", True) is expected
