"""Fixtures for the data and perplexity tests: the shared data directory, an empty offline one, tiny model/tokenizer.

Import them into a test module with ``from tests.data_fixtures import shared_data_dir, offline_empty_data_dir``.
"""
from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def hub_forbidden(*args, **kwargs):
    raise AssertionError("the test reached the Hugging Face Hub loader")


@pytest.fixture
def shared_data_dir(monkeypatch) -> Path:
    """LLMPRUNE_DATA_DIR -> the genuine data beside the checkout (../shared/data); the Hub is off and never called."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"test data not found at {SHARED_DATA}; the repository expects ../shared/data beside it")
    monkeypatch.setenv("LLMPRUNE_DATA_DIR", str(SHARED_DATA))
    _force_offline(monkeypatch)
    return SHARED_DATA


@pytest.fixture
def offline_empty_data_dir(monkeypatch, tmp_path) -> Path:
    """LLMPRUNE_DATA_DIR -> an empty folder, offline, and any Hub call fails the test."""
    folder = tmp_path / "data"
    folder.mkdir()
    monkeypatch.setenv("LLMPRUNE_DATA_DIR", str(folder))
    _force_offline(monkeypatch)
    return folder


def _force_offline(monkeypatch) -> None:
    from llmprune.data import sources

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(sources, "_load_hub", hub_forbidden)


@pytest.fixture(scope="session")
def tiny_lm():
    """(model, tokenizer): a tiny random Llama and the tiny byte-level BPE tokenizer from tests/tiny_models.py."""
    from tests.tiny_models import tiny_model, tiny_tokenizer

    model, _ = tiny_model("llama")
    return model, tiny_tokenizer()
