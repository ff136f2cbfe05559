"""Which matmul path a packed format takes on CUDA for a given number of tokens (the dispatch table).

Regimes, per call of ``<fmt>_matmul(x, packed)`` with M = tokens (rows of x):
- ``gemv``  — the decode kernel: row blocks of W streamed once against M <= ``DECODE_MAX`` tokens (FMAs, or one
  padded tl.dot for 5-16 tokens; at 2-4 tokens the autotuner times both blocks, ``_common.decode_blocks``).
  Memory-bound: its ideal speedup over fp16 is the format's byte ratio.
- ``gemm``  — the prefill kernel: tl.dot on tiles dequantized in registers (17-63 tokens).
- ``dense`` — dequantize the whole weight once per call with the format's Triton dequantize kernel into a temporary
  ``[N, K]`` buffer, then the library GEMM (cuBLAS). At large M the GEMM's O(M·N·K) work dwarfs the O(N·K)
  dequantization, and cuBLAS beats a Triton GEMM that also dequantizes. Measured on H100: 0.86-0.97x of dense at
  4096 tokens (group_sparse_int4 0.52-0.64x: its scatter dequantization is slow), but only 0.53-0.60x at 512, where
  writing the dense temporary (~45 us for 11008x4096) costs as much as the GEMM itself — issue 6's "within 10% of
  dense from 512 tokens" is not met; a fused GEMM with Marlin-style pre-shuffled codes would be needed.
- ``chunked`` — ``dense`` in L2-sized slices, each slice's dequantization overlapping the previous slice's GEMM on a
  second stream (kernels/chunked.py). Not chosen automatically until a GPU run measures it against ``dense``.
- ``semi_structured`` — for ``sparse24`` only, PyTorch's sparse tensor cores (kernels/sparse24.py); it needs the
  weight converted once and kept by the caller (``packed["semi_structured"]``); when present, ``sparse24_matmul``
  takes it from ``SEMI_FROM`` tokens (default 512: ~1.7-2x over dense only on large GEMMs, ~0.1x at batch 1).

Measured on an H100 (benchmarks/results/gpu/, 2026-11-23): gemv up to 16 tokens (4 for group_sparse_int4, whose
decode kernel gathers x per row), gemm below 64, dense from 64 — at 64 tokens dequantize + cuBLAS already beats our
Triton GEMM for every format (median gemm/dense time 1.10 int4, 1.10 sparse24, 1.71 sparse24_int4, 1.52
group_sparse_int4), and the gap grows with the batch. spqr goes to dense from 17 tokens: its GEMM kernel rebuilds six
statistics and a 3-bit stream per tile and spills registers in every config on sm_90 (240-1128 B of stack per
thread, ``python tests/kernels/compile_check.py --resources``); measured 25x slower than dense at 512 tokens.
These crossovers predate the decode rework measured only statically so far (benchmarks/results/instruction_mix/:
fewer instructions per byte at 1-4 tokens); re-measure them on the next GPU run. ``benchmarks/kernels.py`` prints
the measured crossover per format and GPU; copy its numbers into ``DENSE_FROM``
(and ``GEMV_UP_TO``) below when they differ on another GPU.
"""
from __future__ import annotations

REGIMES = ("gemv", "gemm", "dense", "chunked")
SEMI_FROM = 512
GEMV_UP_TO = {"int4": 16, "sparse24": 16, "sparse24_int4": 16, "group_sparse_int4": 4, "spqr": 16}
DENSE_FROM = {"int4": 64, "sparse24": 64, "sparse24_int4": 64, "group_sparse_int4": 64, "spqr": 17}


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
