"""The registry of within-source methods, the meaning of `weighted`, and the config's
conventions (ConfigError fields, renamed fields, HfArgumentParser with TrainingArguments)."""
from __future__ import annotations

import dataclasses
import re
import warnings
from pathlib import Path

import pytest
import torch

from colm.config import FEATURE_FREE, WITHIN_SOURCE, CoresetConfig, current_field_names
from colm.errors import ConfigError
from colm.selection.methods import registry
from colm.selection.selector import CoresetSelector

DOCS = Path(__file__).resolve().parents[1] / "docs" / "method.md"


@pytest.fixture
def toy_method():
    method = registry.register(registry.Method("first_rows", False, "toy_method:fill", "sample", "the first rows"))
    yield method
    del registry.METHODS[method.name]


def test_a_new_method_is_one_module_and_one_registry_entry(toy_method):
    config = CoresetConfig(within_source="first_rows", small_sources="none")
    assert not config.needs_features
    selector = CoresetSelector(config, {"a": 6, "b": 4})
    s = selector.select(None, ["a", "b"] * 5, budget=4)  # a at 0,2,4,.. b at 1,3,..; 2 + 2 picks
    assert s.indices.tolist() == [0, 1, 2, 3]  # the first two rows of each source
    assert s.weights.tolist() == [2.5, 2.5, 2.5, 2.5] and s.loss_weights.tolist() == [1.0] * 4


def test_an_unregistered_name_is_refused_with_the_registered_ones():
    with pytest.raises(ConfigError, match="within_source.*one of .*'random'") as err:
        CoresetConfig(within_source="first_rows")
    assert err.value.field == "within_source"
    with pytest.raises(ValueError, match="already registered"):
        registry.register(registry.Method("random", False, "toy_method:fill", "sample", "x"))


def test_config_and_docs_derive_from_the_registry():
    assert WITHIN_SOURCE == registry.method_names()
    assert FEATURE_FREE == ("random",) == registry.feature_free_names()
    for name in WITHIN_SOURCE:
        assert CoresetConfig(within_source=name).needs_features == registry.METHODS[name].needs_features
    # docs/method.md carries the table the registry renders (regenerate it with docs_table())
    assert registry.docs_table() in DOCS.read_text(), "docs/method.md's method table is stale"


def test_weighted_random_trains_uniform():
    # The case of issue 19: sources of 6/4/2 pool rows, budget 6; "c" is small (kept whole),
    # "a" and "b" get 2 picks each. weighted used to make these loss weights [3, 3, 2, 2, 1, 1].
    selector = CoresetSelector(CoresetConfig(within_source="random", weighted=True), {"a": 6, "b": 4, "c": 2})
    s = selector.select(None, ["a"] * 6 + ["b"] * 4 + ["c"] * 2, 6)
    assert s.loss_weights.tolist() == [1.0] * 6
    assert sorted(s.weights.tolist()) == [1.0, 1.0, 2.0, 2.0, 3.0, 3.0]  # what each row stands for


def test_weighted_facility_location_trains_cluster_sizes():
    feats = torch.randn(12, 8, generator=torch.Generator().manual_seed(0))
    sizes, sources = {"a": 6, "b": 6}, ["a"] * 6 + ["b"] * 6
    for weighted in (False, True):
        s = CoresetSelector(CoresetConfig(within_source="facility_location", weighted=weighted), sizes).select(
            feats, sources, 4)
        assert s.weights.sum().item() == 12  # cluster sizes cover each source
        assert s.loss_weights.tolist() == (s.weights.tolist() if weighted else [1.0] * 4)


def test_config_errors_name_their_field():
    for kwargs, field in [({"pool_factor": True}, "pool_factor"), ({"topk_dims": 0}, "topk_dims"),
                          ({"zo_probes": 1.5}, "zo_probes"), ({"selection_seed": "x"}, "selection_seed"),
                          ({"pseudo_sources": 1}, "pseudo_sources"), ({"pseudo_source_warmup_steps": -1},
                                                                      "pseudo_source_warmup_steps")]:
        with pytest.raises(ConfigError) as err:
            CoresetConfig(**kwargs)
        assert err.value.field == field and isinstance(err.value, ValueError)
        assert str(err.value).startswith(f"CoresetConfig.{field} = ")


def test_old_field_names_warn_and_map():
    with pytest.warns(FutureWarning, match="seed is now selection_seed"):
        config = CoresetConfig(seed=3)
    assert config.selection_seed == 3 and "seed" not in config.to_dict()
    with pytest.warns(FutureWarning, match="target_modules is now feature_modules"):
        assert CoresetConfig(target_modules="v_proj").feature_modules == ["v_proj"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # copies (dataclasses.replace) do not warn again
        assert dataclasses.replace(config, pool_factor=3).selection_seed == 3
    with pytest.warns(FutureWarning), pytest.raises(ConfigError, match="selection_seed"):
        CoresetConfig(seed=1, selection_seed=2)


def test_saved_config_of_an_old_checkpoint_loads():
    # to_dict() of the pre-rename CoresetConfig (commit d23d75c), as checkpoints hold it
    old = {**CoresetConfig().to_dict(), "seed": 5, "target_modules": ["v_proj"]}
    del old["selection_seed"], old["feature_modules"]
    with pytest.warns(FutureWarning):
        config = CoresetConfig.from_dict(old)
    assert (config.selection_seed, config.feature_modules) == (5, ["v_proj"])
    assert current_field_names(old) == config.to_dict()  # so a resume compares them equal
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert CoresetConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="unknown field"):
        CoresetConfig.from_dict({"sed": 1})


def test_selection_seed_defaults_to_the_training_seed():
    assert CoresetConfig().with_training_seed(42).selection_seed == 42
    assert CoresetConfig(selection_seed=1).with_training_seed(42).selection_seed == 1
    assert CoresetConfig().effective_seed == 0


def test_config_annotations_are_evaluated_so_type_hints_work_on_python_310():
    # typing.get_type_hints (HfArgumentParser's and the CLI's) failed on Python 3.10 at
    # CoresetConfig's InitVar fields while config.py used string annotations: every `colm`
    # command broke there. CI runs 3.11, so this checks the cause on any version.
    import typing

    assert not any(isinstance(t, str) for t in CoresetConfig.__annotations__.values())
    hints = typing.get_type_hints(CoresetConfig)
    assert typing.get_args(hints["similarity"]) == ("l1", "l2", "cosine")


@pytest.mark.parametrize("args_class", ["TrainingArguments", "SFTConfig"])
def test_composes_with_training_arguments_in_one_parser(args_class, tmp_path):
    transformers = pytest.importorskip("transformers")
    cls = transformers.TrainingArguments if args_class == "TrainingArguments" else pytest.importorskip("trl").SFTConfig
    parser = transformers.HfArgumentParser((cls, CoresetConfig))
    base = ["--output_dir", str(tmp_path), "--use_cpu", "--bf16", "false"]
    targs, config = parser.parse_args_into_dataclasses(base + [
        "--seed", "5", "--within_source", "mean_match", "--feature_modules", "a", "b", "--topk_dims", "10",
        "--small_sources", "x", "y", "--adam_betas", "0.8", "0.9"])
    assert targs.seed == 5
    assert config == CoresetConfig(within_source="mean_match", feature_modules=["a", "b"], topk_dims=10,
                                   small_sources=["x", "y"], adam_betas=[0.8, 0.9])
    _, config = parser.parse_args_into_dataclasses(base + ["--pseudo_sources", "3", "--small_sources", "none"])
    assert (config.pseudo_sources, config.small_sources) == (3, "none")
    _, config = parser.parse_args_into_dataclasses(base)
    assert config == CoresetConfig()
    clash = {f.name for f in dataclasses.fields(cls)} & {f.name for f in dataclasses.fields(CoresetConfig)}
    assert not clash


def test_cli_maps_a_config_error_to_its_option_by_field():
    from colm.cli import args as cli_args
    from colm.cli.errors import UsageError

    sel = cli_args.SelectionArguments(zo_probes=0)
    with pytest.raises(UsageError, match=re.escape("--zo-probes: CoresetConfig.zo_probes = 0 is invalid")):
        cli_args.to_coreset_config(sel)


def test_cli_selection_seed_defaults_to_seed_and_old_option_warns(tmp_path):
    pytest.importorskip("transformers")
    from colm.cli import train

    base = ["--output-dir", str(tmp_path), "--seed", "5"]
    coreset = train.parse(base)[4]  # (model, data, selection, training, CoresetConfig, run)
    assert coreset.selection_seed == 5  # the training seed, written into the run's config
    coreset = train.parse(base + ["--selection-seed", "2"])[4]
    assert coreset.selection_seed == 2
    with pytest.warns(FutureWarning, match="--target-modules is now --feature-modules"):
        coreset = train.parse(base + ["--target-modules", "v_proj$"])[4]
    assert coreset.feature_modules == ["v_proj$"]
