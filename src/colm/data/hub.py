"""Decide, fast, whether the Hugging Face Hub can be used.

Without this, loading a hub id with no network retries for tens of seconds (~23 s on this
project's machines) before failing. colm instead treats "no network" like HF_HUB_OFFLINE=1:
it loads from the local cache only and fails at once with a clear message when the cache
lacks the id.
"""
from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

_TRUE = {"1", "ON", "YES", "TRUE"}
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
_reachable_cache: dict[str, bool] = {}


def env_offline() -> bool:
    """True when the user asked for offline mode (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").upper() in _TRUE:
            return True
    try:  # huggingface_hub reads the variables once at import; honour what it decided too
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover - huggingface_hub is a dependency of transformers
        return False


def hub_endpoint() -> str:
    """The Hub URL huggingface_hub will talk to (HF_ENDPOINT or huggingface.co)."""
    try:
        from huggingface_hub import constants

        return constants.ENDPOINT
    except Exception:  # pragma: no cover
        return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def hub_reachable(endpoint: str | None = None, timeout: float = 2.0) -> bool:
    """Whether a TCP connection to the Hub opens within `timeout` seconds (cached per endpoint).

    Behind a proxy a direct connection says nothing, so the Hub is then assumed reachable and
    huggingface_hub's own error handling applies. The probe runs in a daemon thread because
    name resolution ignores socket timeouts.
    """
    endpoint = endpoint or hub_endpoint()
    if endpoint in _reachable_cache:
        return _reachable_cache[endpoint]
    if any(os.environ.get(v) for v in _PROXY_VARS):
        return True
    url = urlparse(endpoint)
    host = url.hostname or "huggingface.co"
    port = url.port or (443 if url.scheme != "http" else 80)
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    ok = bool(result and result[0])
    _reachable_cache[endpoint] = ok
    return ok


def hub_offline() -> bool:
    """True when colm should use only locally cached Hub files."""
    return env_offline() or not hub_reachable()


def looks_like_local_path(name: str) -> bool:
    """A name the user most likely meant as a path, not a hub id ("org/name" or "name")."""
    if name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1:
        return True
    return Path(name).suffix in {".json", ".jsonl", ".gz", ".parquet", ".csv", ".arrow", ".txt"}


@contextlib.contextmanager
def datasets_offline(enabled: bool) -> Iterator[None]:
    """Make `datasets` use its cache only while the block runs (it has no per-call switch)."""
    import datasets

    saved = datasets.config.HF_HUB_OFFLINE
    if enabled:
        datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE = saved
