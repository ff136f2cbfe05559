"""The only module that reads environment variables.

- ``LLMPRUNE_DATA_DIR``: folder holding local datasets as ``<dir>/<name>/...`` (wikitext2, c4, ptb, arc_easy, ...).
- ``LLMPRUNE_CACHE_DIR``: where converted models (the ``smollm2-135m`` alias) and batch results are cached.
- ``LLMPRUNE_KERNEL``: ``auto`` (default), ``reference`` or ``triton``: which matmul path packed modules use.
- ``HF_HUB_OFFLINE``: respected as transformers does.
"""
from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path | None:
    value = os.environ.get("LLMPRUNE_DATA_DIR")
    return Path(value).expanduser() if value else None


def cache_dir() -> Path:
    value = os.environ.get("LLMPRUNE_CACHE_DIR")
    if value:
        return Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "llmprune"


def kernel_mode() -> str:
    return os.environ.get("LLMPRUNE_KERNEL", "auto").lower()


def hub_offline(datasets: bool = False) -> bool:
    """True when Hugging Face's own offline switches are on; ``datasets=True`` also honours HF_DATASETS_OFFLINE."""
    names = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE") if datasets else ("HF_HUB_OFFLINE",)
    return any(os.environ.get(var, "0").lower() in {"1", "true", "yes"} for var in names)


def hub_reachable(timeout: float = 3.0) -> bool:
    """A cheap TCP probe of the Hub endpoint, so an unreachable Hub fails in seconds instead of after minutes of
    retries (transformers' and datasets' own)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def describe_data_dir() -> str:
    """Where LLMPRUNE_DATA_DIR points, for error messages (unset, missing, or the folder)."""
    root = data_dir()
    if root is None:
        return "LLMPRUNE_DATA_DIR is not set"
    return f"LLMPRUNE_DATA_DIR={root}" + ("" if root.is_dir() else ", which does not exist")
