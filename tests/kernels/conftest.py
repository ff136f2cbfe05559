"""The kernel tests run Triton's interpreter on CPU tensors, in their own pytest process.

Triton reads TRITON_INTERPRET when ``@triton.jit`` runs (at import of llmprune.kernels.<fmt>), so the variable must
be set before pytest starts: ``TRITON_INTERPRET=1 python -m pytest -q tests/kernels``. The main run skips this
folder with ``--ignore=tests/kernels``.
"""
from __future__ import annotations

import os

import pytest

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.exit(
        "tests/kernels needs Triton's interpreter: run `TRITON_INTERPRET=1 python -m pytest -q tests/kernels` "
        "(and `--ignore=tests/kernels` in the main run)",
        returncode=4,
    )


@pytest.fixture
def cpu_kernels(monkeypatch):
    """Dispatch as on a GPU: every format with a kernel takes it, here through the interpreter."""
    import torch

    from llmprune import dispatch
    from llmprune.kernels import FORMATS_WITH_KERNELS

    monkeypatch.setattr(dispatch, "_paths", {})
    monkeypatch.setattr(dispatch, "_kernel_reason", lambda fmt, device, dtype: "kernel available")
    for fmt in FORMATS_WITH_KERNELS:
        monkeypatch.setitem(dispatch._launchers, fmt, dispatch.import_launcher(fmt))
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture
def launch_grids(monkeypatch):
    """(BLOCK_B, grid) of every launch made with a fixed config (``kernels/_launch.launch``), which still runs."""
    from llmprune.kernels import _launch

    grids, launch = [], _launch.launch

    def spied(kernel, tuned, grid, args, consts, fixed, *memo):
        grids.append((fixed["BLOCK_B"], grid({**consts, **fixed})))
        return launch(kernel, tuned, grid, args, consts, fixed, *memo)

    monkeypatch.setattr(_launch, "launch", spied)
    return grids
