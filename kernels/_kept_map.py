"""GQSA's kept groups in dense column order, so a kernel walking the dense columns finds each group's packed slot
from the column alone.

``kept_map(group_idx, groups)`` is ``[N, ceil(groups/32), 2]`` int32: ``bits`` has bit b of word w set when the row
keeps dense group 32w + b, and ``base`` counts the row's kept groups before group 32w, so kept group j sits in slot
``base + popcount(bits & ((1 << b) - 1))`` of ``group_idx``/``qweight``/``scales``/``zeros`` (``kept_slots``).

Why: the prefill kernel used to advance one cursor per row through ``group_idx`` while walking the dense groups, so
every step's loads waited on the previous step's — a chain of global-memory latencies (~1.5 us per group on the
H100: 390 us for 4096x4096 at any batch, benchmarks/results/gpu/2026-11-23-H100-bench-fp16.md). From the map, a
step's loads depend on its columns only and Triton pipelines them. The map is derived from ``group_idx`` on its
device once per weight and cached with the tensor (weakly; rebuilt if the tensor is modified in place or its
storage swapped): 8 bytes per 32 groups and row, ~3% of a 50%-dense W4 g16 weight.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.utils.weak import WeakIdKeyDictionary

from llmprune.tensor_state import state

_maps = WeakIdKeyDictionary()  # group_idx tensor -> ((its version, data pointer), groups, map)


def kept_map(group_idx: Tensor, groups: int) -> Tensor:
    """The bitmap and running counts of ``group_idx`` ([N, KG], ascending indices < ``groups``), cached per tensor.
    Not cached while a CUDA graph is being captured (its kernels only run at replay, so the cached map would be
    unwritten until then): such graphs rebuild it at each replay."""
    hit, now = _maps.get(group_idx), state(group_idx)
    if hit is not None and hit[:2] == (now, groups):
        return hit[2]
    built = _build(group_idx, groups)
    if not (group_idx.is_cuda and torch.cuda.is_current_stream_capturing()):
        _maps[group_idx] = (now, groups, built)
    return built


def _build(group_idx: Tensor, groups: int) -> Tensor:
    n, dev = group_idx.shape[0], group_idx.device
    words = -(-groups // 32)
    flags = torch.zeros(n, words * 32, dtype=torch.int64, device=dev).scatter_(1, group_idx.long(), 1)
    flags = flags.view(n, words, 32)
    bits = (flags << torch.arange(32, device=dev)).sum(-1)
    bits = bits - ((bits >> 31) << 32)  # the same 32 bits as a signed int32
    counts = flags.sum(-1)
    return torch.stack((bits, counts.cumsum(-1) - counts), -1).to(torch.int32).contiguous()


@triton.jit
def popcount(v):
    """Set bits of each int32 (SWAR; Triton has no portable popcount). Exact for negative values too: the first
    mask drops the sign bits an arithmetic shift brings in, after which every value is non-negative."""
    v = v - ((v >> 1) & 0x55555555)
    v = (v & 0x33333333) + ((v >> 2) & 0x33333333)
    v = (v + (v >> 4)) & 0x0F0F0F0F
    v = v + (v >> 8)
    v = v + (v >> 16)
    return v & 0x3F


@triton.jit
def kept_slots(map_ptr, rn, k0, N, K, GROUP: tl.constexpr, BLOCK_K: tl.constexpr):
    """(slot int32, kept bool), [BLOCK_N, NG] with NG = max(BLOCK_K / GROUP, 1): for each dense group that columns
    k0 .. k0+BLOCK_K of rows ``rn`` touch, its packed slot and whether the row keeps it (rows >= N and groups past K
    are not kept). GROUP and BLOCK_K are powers of two and k0 a multiple of BLOCK_K, so the tile's groups share
    one bitmap word: one 64-bit load per row."""
    NG: tl.constexpr = BLOCK_K // GROUP if BLOCK_K >= GROUP else 1
    tl.static_assert(NG <= 32, "a K step may span at most one bitmap word (32 groups)")
    words = (K // GROUP + 31) // 32
    g0 = k0 // GROUP
    entry = tl.load(map_ptr + ((rn * words + g0 // 32) * 2)[:, None] + tl.arange(0, 2)[None, :],
                    mask=(rn < N)[:, None], other=0)
    bits, base = tl.split(entry)
    b = ((g0 + tl.arange(0, NG)) % 32)[None, :]
    kept = ((bits[:, None] >> b) & 1) != 0
    slot = base[:, None] + popcount(bits[:, None] & ((1 << b) - 1))
    return slot, kept
