"""Fixtures shared by the CLI test modules."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    # One tokenizer cache for the session: the embedded tokenizer is trained once (~8 s), then reused.
    return tmp_path_factory.mktemp("colm_cache")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module's in-process CLI runs. The CPUs are shared: with other work
    running, two spinning OpenMP threads made steps of the tiny models up to 7x slower (the
    console script avoids it with OMP_WAIT_POLICY=PASSIVE, too late once pytest imported torch)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def offline_env(monkeypatch, cache_dir):
    """No hub access, and colm's cache in the session's temporary folder."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("COLM_CACHE", str(cache_dir))
