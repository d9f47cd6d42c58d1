"""Fixtures shared by the CLI test modules."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    # One tokenizer cache for the session: the embedded tokenizer is trained once (~8 s), then reused.
    return tmp_path_factory.mktemp("colm_cache")
