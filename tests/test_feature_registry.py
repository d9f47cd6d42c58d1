"""The registry of feature kinds (colm.features.registry): a new kind is one module and one
`register` line, and CoresetConfig, the CLI and docs/method.md derive from the registry."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from colm.config import CoresetConfig
from colm.errors import ConfigError
from colm.features import registry

DOCS = Path(__file__).resolve().parents[1] / "docs" / "method.md"


@pytest.fixture
def toy_feature():
    feature = registry.register(registry.Feature("token_counts", "toy_feature:extract", "supervised and real tokens"))
    yield feature
    del registry.FEATURES[feature.name]


def test_a_new_feature_kind_is_one_module_and_one_registry_entry(toy_feature):
    from trainer_helpers import tiny_llama

    from colm.features import gradient_features

    config = CoresetConfig(within_source="mean_match", feature="token_counts", adam_normalize=False)
    batch = {"input_ids": torch.tensor([[5, 6, 7, 0], [5, 6, 0, 0]]),
             "attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]]),
             "labels": torch.tensor([[-100, 6, 7, -100], [-100, 6, -100, -100]])}
    features = gradient_features(tiny_llama(), batch, config)
    assert features.tolist() == [[2.0, 3.0], [1.0, 2.0]]


def test_an_unregistered_kind_is_refused_with_the_registered_ones():
    with pytest.raises(ConfigError, match="feature.*one of .*'exact'") as err:
        CoresetConfig(feature="token_counts")
    assert err.value.field == "feature"


def test_config_cli_and_docs_derive_from_the_registry(toy_feature):
    from colm.cli import args as cli_args

    assert "token_counts" in registry.feature_names()
    CoresetConfig(feature="token_counts")  # accepted once registered
    cls = cli_args._selection_arguments()  # the CLI's choices, built from the registry
    field = next(f for f in __import__("dataclasses").fields(cls) if f.name == "feature")
    assert "token_counts" in field.metadata["choices"]
    del registry.FEATURES[toy_feature.name]
    try:
        assert registry.docs_table() in DOCS.read_text(), "docs/method.md's feature table is stale"
    finally:
        registry.FEATURES[toy_feature.name] = toy_feature
