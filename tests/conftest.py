"""Shared test settings: the data directory, offline Hugging Face libraries, a CPU-only default."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# The Hub is unreachable here and in CI: fail fast instead of waiting on network timeouts.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Set before torch loads OpenMP: busy-waiting threads slow everything down badly on a shared 2-core machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
if SHARED_DATA.is_dir():
    os.environ.setdefault("LLMPRUNE_DATA_DIR", str(SHARED_DATA))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The genuine datasets next to the checkout (WikiText-2, C4 sample, zero-shot tasks)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"test data not found at {SHARED_DATA}; the repository expects ../shared/data beside it")
    return SHARED_DATA


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct, converted once from its GGUF into the llmprune cache."""
    from llmprune.model import resolve

    return resolve("smollm2-135m")


@pytest.fixture
def one_thread():
    """Toy matmuls on a busy 2-core machine are ~100x slower with several intra-op threads contending."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
