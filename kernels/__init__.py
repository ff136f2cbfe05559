"""Fused Triton kernels for the packed formats (one module per format; ``kernels/select.py`` picks the path).

Importing this package imports no triton and touches no GPU: the format modules (``llmprune.kernels.int4`` ...)
import triton and their torch oracle (``llmprune.formats.<fmt>.matmul_ref``) when the dispatcher first needs them.
Each exposes ``<fmt>_matmul(x, packed, *, out=None, regime=None) -> Tensor`` (checks everything per call), and
``prepare(packed, device, k)`` with ``KERNELS``, the checked launch a ``PackedLinear`` builds once and reuses
(llmprune/dispatch.py); ``supports(dtype)`` is optional.
"""
from __future__ import annotations

import importlib.util

FORMATS_WITH_KERNELS = ("int4", "sparse24", "sparse24_int4", "group_sparse_int4", "spqr")


def available() -> bool:
    """True when triton is installed and a CUDA GPU is visible (the kernels' only supported target)."""
    if importlib.util.find_spec("triton") is None:
        return False
    import torch

    return torch.cuda.is_available()


def matmul_fn(fmt: str):
    """The launcher ``<fmt>_matmul`` of a format (imports triton)."""
    from importlib import import_module

    if fmt not in FORMATS_WITH_KERNELS:
        from llmprune.errors import UserInputError

        raise UserInputError(f"no kernel for format '{fmt}'; kernels exist for {', '.join(FORMATS_WITH_KERNELS)}")
    return getattr(import_module(f"llmprune.kernels.{fmt}"), f"{fmt}_matmul")
