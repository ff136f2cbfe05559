"""The ``chunked`` large-batch regime: dequantize the weight slice by slice into L2-sized buffers and multiply each
slice with the library GEMM, the next slice's dequantization overlapping the current GEMM on a second CUDA stream.

Why: the ``dense`` regime writes the whole dense weight to HBM before cuBLAS reads it back — measured on an H100,
13 us for 4096x4096 and ~40 us for 11008x4096, as long as the 512-token GEMM itself (benchmarks/results/gpu/). A
slice of ``CHUNK_BYTES`` (8 MB) stays in the H100's 50 MB L2 between its dequantization and its GEMM, two buffers
replace the full temporary (16 MB instead of 90 MB for 11008x4096), and a compute-bound GEMM leaves the memory
system free for the next slice's dequantization. Expected, not yet measured: kernels/select.py keeps ``dense`` as
the default until ``benchmarks/kernels.py`` times both on a GPU.

Deviation from a fused GEMM (Marlin, Machete): the weight still makes one round trip through the memory hierarchy
(L2, not HBM); in exchange the GEMM is cuBLAS's.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

CHUNK_BYTES = 8 << 20
_side_streams: dict[int, "torch.cuda.Stream"] = {}


def chunk_rows(n: int, k: int, itemsize: int) -> int:
    """Rows per slice: ``CHUNK_BYTES`` of dense weight, a multiple of 128 (whole GEMM tiles), at least 128."""
    rows = CHUNK_BYTES // (k * itemsize)
    return n if rows >= n else max(128, rows // 128 * 128)


def chunked_matmul(x2: Tensor, n: int, k: int, dequantize_rows: Callable[[int, int, Tensor], None],
                   y2: Tensor) -> None:
    """y2 [M, N] = x2 [M, K] @ W.T, where ``dequantize_rows(r0, r1, buf)`` writes W[r0:r1] into ``buf`` in x2's
    dtype. On CUDA slice i+1 is dequantized on a side stream while slice i multiplies on the current one."""
    rows = chunk_rows(n, k, x2.element_size())
    starts = list(range(0, n, rows))
    double = x2.is_cuda and len(starts) > 1  # a second buffer only pays where two slices can be in flight
    bufs = [torch.empty(rows, k, dtype=x2.dtype, device=x2.device) for _ in range(2 if double else 1)]
    if not x2.is_cuda:
        for r0 in starts:
            r1 = min(n, r0 + rows)
            dequantize_rows(r0, r1, bufs[0][: r1 - r0])
            torch.mm(x2, bufs[0][: r1 - r0].t(), out=y2[:, r0:r1])
        return
    main = torch.cuda.current_stream(x2.device)
    side = _side_streams.get(x2.device.index)
    if side is None:  # one side stream per device for the process (setdefault would create one per call)
        side = _side_streams[x2.device.index] = torch.cuda.Stream(x2.device)
    side.wait_stream(main)  # x2 and the packed tensors were produced on the current stream
    free: list = [None] * len(bufs)
    for i, r0 in enumerate(starts):
        r1, b = min(n, r0 + rows), i % len(bufs)
        with torch.cuda.stream(side):
            if free[b] is not None:
                side.wait_event(free[b])  # the GEMM that read this buffer two slices ago is done
            dequantize_rows(r0, r1, bufs[b][: r1 - r0])
            ready = torch.cuda.Event()
            ready.record(side)
        main.wait_event(ready)
        torch.mm(x2, bufs[b][: r1 - r0].t(), out=y2[:, r0:r1])
        free[b] = torch.cuda.Event()
        free[b].record(main)
    for buf in bufs:
        buf.record_stream(side)  # the allocator must not hand the buffers out before the side stream is done
