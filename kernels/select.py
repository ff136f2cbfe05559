"""Which matmul path a packed format takes on CUDA for a given number of tokens (the dispatch table).

Regimes, per call of ``<fmt>_matmul(x, packed)`` with M = tokens (rows of x):
- ``gemv``  — the decode kernel: row blocks of W streamed once against M <= ``DECODE_MAX`` tokens (FMAs, or one
  padded tl.dot for 5-16 tokens). Memory-bound: its ideal speedup over fp16 is the format's byte ratio.
- ``gemm``  — the prefill kernel: tl.dot on tiles dequantized in registers.
- ``dense`` — dequantize the whole weight once per call with the format's Triton dequantize kernel into a temporary
  ``[N, K]`` buffer, then the library GEMM (cuBLAS). At large M the GEMM's O(M·N·K) work dwarfs the O(N·K)
  dequantization, and cuBLAS beats a Triton GEMM that also dequantizes, so this is the fallback that keeps every
  format within a few percent of dense at M >= 512 (issue 6: no path more than 10% slower than dense there).
- ``semi_structured`` — for ``sparse24`` only, PyTorch's sparse tensor cores (kernels/sparse24.py); it needs the
  weight converted once and kept by the caller (``packed["semi_structured"]``); when present, ``sparse24_matmul``
  takes it from ``SEMI_FROM`` tokens (default 512: ~1.7-2x over dense only on large GEMMs, ~0.1x at batch 1).

Default (before GPU measurement): gemv up to 16 tokens (4 for group_sparse_int4, whose decode kernel gathers x per
row), gemm up to 511, dense from 512. spqr goes to dense from 17 tokens: its GEMM kernel rebuilds six statistics and
a 3-bit stream per tile and spills registers in every config on sm_90 (240-1128 B of stack per thread, reported by
``python tests/kernels/compile_check.py --resources``), so we do not expect it to beat dequantize + cuBLAS.
``benchmarks/kernels.py`` prints the measured crossover per format and GPU;
copy its numbers into ``DENSE_FROM`` (and ``GEMV_UP_TO``) below when they differ.
"""
from __future__ import annotations

REGIMES = ("gemv", "gemm", "dense")
SEMI_FROM = 512
GEMV_UP_TO = {"int4": 16, "sparse24": 16, "sparse24_int4": 16, "group_sparse_int4": 4, "spqr": 16}
DENSE_FROM = {"int4": 512, "sparse24": 512, "sparse24_int4": 512, "group_sparse_int4": 512, "spqr": 17}


def decode_max(fmt: str) -> int:
    """Most tokens one decode (GEMV) program handles; more tokens take batch blocks of this size (or fewer)."""
    return GEMV_UP_TO[fmt]


def choose(fmt: str, tokens: int) -> str:
    """The regime for ``tokens`` rows of activations: 'gemv', 'gemm' or 'dense' (see the module docstring)."""
    if tokens <= GEMV_UP_TO[fmt]:
        return "gemv"
    return "gemm" if tokens < DENSE_FROM[fmt] else "dense"


def table() -> list[tuple[str, str]]:
    """(format, rule) rows for docs and benchmark reports."""
    return [(fmt, f"gemv <= {GEMV_UP_TO[fmt]} < gemm < {DENSE_FROM[fmt]} <= dense") for fmt in GEMV_UP_TO]
