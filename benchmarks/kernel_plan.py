"""The autotuning a ``benchmarks/kernels.py --bench`` run starts with: counted without a GPU (``--plan``), and
compiled ahead on every CPU core (``--precompile``, which ``--bench`` and ``--check`` run first).

A GPU session gets 10 minutes per call (benchmarks/results/gpu/README.md), and the first run of the table compiles and
times every surviving autotune config of every key before it times anything itself, one compile at a time. The count
follows the autotuners' own config lists and pruning (``KernelPair.tuned_configs``) and Triton's compile cache: a
config compiles once per kernel, dtype and specialization and is timed once per autotune key (N, K, token bucket).
The token counts are not specialized (``_configs.launched``), and N, K and the strides are multiples of 16 in every
benchmark shape; per-row counts of the packed tensors that the launchers pass as ints are not always:
group_sparse_int4's kept groups (KG = 344, passed with KG_ALIGN = 8) and spqr's code words (1032) at K = 11008 compile
those two formats' configs a second time for 4096x11008 (read from the launchers' arguments under the interpreter).
The count leaves that out.
"""
from __future__ import annotations

import importlib

COMPILE_S = 0.45  # one kernel config for sm_90, triton 3.6: compile_check.py --full --resources compiled all five
# formats' 513 fp16 kernels (the 508 counted here and 5 dequantize kernels) in 250 s on this project's 2-core CPU
TIMED_S = 0.035  # one config in the autotuner's timer: 5 estimate runs, 5 ms warm-up, 25 ms of L2-flushed reps


def timed_regimes(m: int) -> list:
    """The regimes ``bench_shape`` times at ``m`` tokens: the automatic choice (None), and for the dispatch
    crossovers the decode and prefill kernels at 2-16 tokens, prefill and the two dequantize regimes from 64."""
    return [None] + (["gemv", "gemm"] if 1 < m <= 16 else []) + (["gemm", "dense", "chunked"] if m >= 64 else [])


def autotune_work(fmt: str, shapes, batches, rules) -> tuple[int, int]:
    """(kernel configs compiled, configs timed) for one format and dtype over ``shapes`` x ``batches``, the
    automatic regime resolved by ``rules`` (kernels/select.py's table of the GPU)."""
    kernels = importlib.import_module(f"llmprune.kernels.{fmt}").KERNELS
    compiled, timed = set(), 0
    for m in batches:  # the same configs at every shape: compiled once, timed per shape
        for regime in {r or rules.choose(fmt, m) for r in timed_regimes(m)} & {"gemv", "gemm"}:
            kept = kernels.tuned_configs(regime, [m])  # dense and chunked: one fixed dequantize config
            compiled.update((regime, str(c)) for c in kept)
            timed += len(kept) * len(shapes)
    return len(compiled), timed


def plan_rows(formats, shapes, batches, rules) -> list[str]:
    """Markdown rows per format and in total: compiles, timed configs, and the minutes they take at ``COMPILE_S``
    and ``TIMED_S`` (one dtype; the GPU machine's CPU may compile faster than the 2-core CPU that measured them)."""
    rows, total = [], [0, 0]
    for fmt in formats:
        compiled, timed = autotune_work(fmt, shapes, batches, rules)
        total[0] += compiled
        total[1] += timed
        rows.append(_row(fmt, compiled, timed))
    return rows + [_row("**all**", *total)]


def _row(name: str, compiled: int, timed: int) -> str:
    minutes = (compiled * COMPILE_S + timed * TIMED_S) / 60
    return f"| {name} | {compiled} | {timed} | {minutes:.1f} |"


def precompile(formats, dtypes, shapes, batches, workers: int, device: str = "cuda") -> list[str]:
    """Compile every config the bench's autotuning will time, for every shape (the specializations differ, see
    above), into Triton's on-disk cache, where the autotuner's own compiles then find them: one launch per format,
    dtype, shape and regime with ``KernelPair.compile_for`` set, under Triton's ``AsyncCompileMode`` with a thread
    per CPU core (most of a compile runs outside the GIL, in MLIR, LLVM and ptxas: two threads compiled int4's
    configs 1.6x faster than one on a 2-core CPU). Returns a line per format (``device="cpu"`` under
    TRITON_INTERPRET=1 is the CPU dry run of the plumbing)."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    import torch
    from triton.runtime._async_compile import AsyncCompileMode

    from kernel_inputs import random_packed
    from llmprune.kernels import matmul_fn

    lines = []
    for fmt in formats:
        kernels = importlib.import_module(f"llmprune.kernels.{fmt}").KERNELS
        start = time.perf_counter()
        kernels.compile_for = tuple(batches)
        try:
            with ThreadPoolExecutor(workers) as pool, AsyncCompileMode(pool, ignore_errors=True):
                for dtype in dtypes:
                    for n, k in shapes:
                        packed = random_packed(fmt, n, k, dtype, device=device)
                        for regime, m in (("gemv", 1), ("gemm", 16)):
                            matmul_fn(fmt)(torch.randn(m, k, device=device).to(dtype), packed, regime=regime)
        finally:
            kernels.compile_for = None
        lines.append(f"precompiled {fmt}: {time.perf_counter() - start:.0f} s on {workers} threads")
        print(lines[-1], flush=True)
    return lines
