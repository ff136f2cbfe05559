"""Triton kernels for ``group_sparse_int4`` (GQSA: group quantization + group sparsity, Zeng et al. 2024,
arXiv:2412.17560): every row keeps the same number KG of g-column groups, stored as int4 codes.

Layout (docs/FORMATS.md): ``group_idx: [N, KG] int16`` kept groups, ascending; ``qweight: [N, KG*g/2] uint8`` the
nibble-packed codes of the kept groups in ``group_idx`` order; ``scales: [N, KG]`` fp16/bf16; ``zeros: [N, KG] uint8``.
Worked example (g = 4, 3 groups, keep 1): group_idx row [2] with codes [1, 2, 3, 4] → qweight row [0x21, 0x43]
covering columns 8..11.

Decode (1-4 tokens) streams only the kept groups (the byte ratio is the speed limit). With g % 8 == 0 it reads the
codes as 32-bit words like int4's decode (bit-op conversion; one token folds the statistics into per-word sums, 2-4
tokens subtract the zero point from each code once and share it) and loads each word's 8 activations with one vector
load (x is small and stays in L1/L2); other groups gather x per code.

Prefill, the 5-16 token tl.dot decode block and the dequantize kernel walk the dense columns instead, so that every
tl.dot tile shares its K columns across rows: a per-row bitmap of kept groups with running counts
(kernels/_kept_map.py, derived from ``group_idx`` once per weight) gives each dense group's packed slot, or says the
row dropped it (zero weights). No step's loads depend on another's, so Triton pipelines them; the walk replaced a
cursor per row advanced through ``group_idx``, whose serial chain of load latencies took ~390 us for 4096x4096 on
the H100 at any batch (benchmarks/results/gpu/2026-11-23-H100-bench-fp16.md), and a dequantize kernel that scattered
2-byte stores into a zeroed buffer (12x int4's time). Packed bytes of dropped groups are never read.

Deviation: the paper's kernel is a GEMV in CUDA; the dense walk is ours. It spends tensor-core FLOPs and
dequantization instructions on dropped groups (~11 loop instructions per dense weight at 16 tokens on sm_90, twice
int4's), and it needs g a power of two >= 16 (tl.dot tiles, one bitmap word per tile); other groups use the decode
kernel's gather paths at every batch (16 tokens in four sub-blocks of 4) and a scatter dequantize kernel.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from llmprune.errors import UserInputError
from llmprune.formats.group_sparse_int4 import matmul_ref as reference  # noqa: F401  (the tests' oracle)

from ._codes import (
    UNIT, code_float, column_phases, half_order, half_weights, offset_zero, slope_offset, unit_codes, unit_dot,
    word_dot, word_stats, word_tile, word_units,
)
from ._configs import launched
from ._kept_map import kept_map, kept_slots
from ._launch import (  # noqa: F401 (supports: dispatch hook)
    FLOATS, Call, check_packed, dense_buffer, expect_shape, KernelPair, row_slice, split_k_buffers, supports,
)
from ._tiles import (
    aligned, dot_acc, expand_groups, grouped_pid, load_rows, load_x, matvec_finish, matvec_init, nibbles, per_column,
    per_group, split_k_range, split_k_store, split_k_store_tile, store_out, store_tile, store_token_sums, weight_dot,
)


@triton.jit
def _group_sparse_int4_kept(gi_ptr, q_ptr, s_ptr, z_ptr, rn, i0, N, KG, GROUP: tl.constexpr, BLOCK_K: tl.constexpr):
    """Kept weights i0 .. i0+BLOCK_K of rows rn's kept streams: (w float32, dense column, mask), each
    [BLOCK_N, BLOCK_K]; code bytes load contiguously, group indices and statistics once per kept group."""
    kept_cols = KG * GROUP
    ri = i0 + tl.arange(0, BLOCK_K)
    ok = rn < N
    byte = load_rows(q_ptr, rn, N, i0 // 2, kept_cols // 2, kept_cols // 2, 0, BLOCK_K // 2).to(tl.int32)
    col = per_column(gi_ptr, rn, ok, i0, KG, 0, GROUP, BLOCK_K).to(tl.int32) * GROUP + (ri % GROUP)[None, :]
    scale = per_column(s_ptr, rn, ok, i0, KG, 0.0, GROUP, BLOCK_K).to(tl.float32)
    zero = expand_groups(offset_zero(per_group(z_ptr, rn, ok, i0, KG, 0, GROUP, BLOCK_K)), GROUP, BLOCK_K)
    return (code_float(nibbles(byte)) - zero) * scale, col, ok[:, None] & (ri[None, :] < kept_cols)


@triton.jit
def _group_sparse_int4_dense_words(map_ptr, q_ptr, s_ptr, z_ptr, rn, k0, N, K, KG, GROUP: tl.constexpr,
                                   BLOCK_K: tl.constexpr):
    """Dense columns k0 .. k0+BLOCK_K of rows ``rn`` as (code words int32 [BLOCK_N, BLOCK_K/8], scale in its storage
    dtype and zero point in float32 (exact, by ``code_float``: no I2F), [BLOCK_N, NG] each, ``per_group``'s compact
    form), found through the kept map (``kept_slots``): a dropped group reads as zero words with zero scale and zero
    point, so its weights come out exactly 0. GROUP is a power of two >= 16 (a word sits in one group; the tile's
    groups share a bitmap word)."""
    slot, kept = kept_slots(map_ptr, rn, k0, N, K, GROUP, BLOCK_K)
    WG: tl.constexpr = (GROUP if GROUP < BLOCK_K else BLOCK_K) // 8  # words per group within the tile
    first = slot * (GROUP // 8) + (k0 % GROUP) // 8
    row = (rn * (KG * GROUP // 8))[:, None, None]
    words = tl.load(q_ptr.to(tl.pointer_type(tl.int32)) + row + first[:, :, None] + tl.arange(0, WG)[None, None, :],
                    mask=kept[:, :, None], other=0)
    scale = tl.load(s_ptr + rn[:, None] * KG + slot, mask=kept, other=0.0)  # storage dtype: fp16 tiles keep it
    zero = code_float(tl.load(z_ptr + rn[:, None] * KG + slot, mask=kept, other=0).to(tl.int32)) - 8388608.0
    return tl.reshape(words, (rn.shape[0], BLOCK_K // 8)), scale, zero


@triton.jit
def _group_sparse_int4_dense_tile(x, map_ptr, q_ptr, s_ptr, z_ptr, rn, k0, N, K, KG, unit, HALF: tl.constexpr,
                                  GROUP: tl.constexpr, BLOCK_K: tl.constexpr):
    """(W[rn, k0 : k0+BLOCK_K], x) for tl.dot: the tile in fp16 with x permuted to its pair order when HALF (fp16
    activations and scales: ``half_weights``, the reference's weights rounded once), else float32 in column order
    (``word_tile``)."""
    words, scale, zero = _group_sparse_int4_dense_words(map_ptr, q_ptr, s_ptr, z_ptr, rn, k0, N, K, KG, GROUP,
                                                        BLOCK_K)
    if HALF:  # one return statement: compiled Triton wants every return of a function to have the same types
        w = half_weights(words, scale, zero, unit, GROUP, BLOCK_K // 8)
        x = half_order(x, BLOCK_K)
    else:
        slope, offset = slope_offset(scale.to(tl.float32), zero, GROUP, BLOCK_K // 8)
        w = word_tile(words, slope, offset, unit, BLOCK_K)
    return w, x


@triton.jit
def _group_sparse_int4_dense_exact(map_ptr, q_ptr, s_ptr, z_ptr, rn, k0, N, K, KG, GROUP: tl.constexpr,
                                   BLOCK_K: tl.constexpr):
    """W[rn, k0 : k0+BLOCK_K] in float32, bit-identical to the reference's (q - z) * s (``code_float``), zeros in
    dropped groups: the dequantize kernel's tile (nibble j of code word w is column 8w + j)."""
    words, scale, zero = _group_sparse_int4_dense_words(map_ptr, q_ptr, s_ptr, z_ptr, rn, k0, N, K, KG, GROUP,
                                                        BLOCK_K)
    codes = tl.reshape((words[:, :, None] >> (4 * tl.arange(0, 8))[None, None, :]) & 0xF, (rn.shape[0], BLOCK_K))
    scale = expand_groups(scale.to(tl.float32), GROUP, BLOCK_K)
    return (code_float(codes) - expand_groups(offset_zero(zero), GROUP, BLOCK_K)) * scale


@triton.jit
def _group_sparse_int4_word_slots(gi_ptr, q_ptr, rn, i0, N, KG, GROUP: tl.constexpr, BLOCK_K: tl.constexpr):
    """(words, first, live), each [BLOCK_N, BLOCK_K/8]: the 32-bit code words of kept codes i0 .. i0+BLOCK_K of rows
    ``rn`` (GROUP % 8 == 0, so a word's 8 columns are contiguous in x), the x column of each word's first code, and
    which words exist."""
    W: tl.constexpr = BLOCK_K // 8
    kept_words = KG * GROUP // 8
    ok = rn < N
    wi = i0 // 8 + tl.arange(0, W)
    words = load_rows(q_ptr.to(tl.pointer_type(tl.int32)), rn, N, i0 // 8, kept_words, kept_words, 0, W)
    group = expand_groups(per_group(gi_ptr, rn, ok, i0 // 8, KG, 0, GROUP // 8, W).to(tl.int32), GROUP // 8, W)
    first = group * GROUP + ((wi % (GROUP // 8)) * 8)[None, :]
    return words, first, ok[:, None] & (wi[None, :] < kept_words)


@triton.jit
def _group_sparse_int4_word_x(x_ptr, row, first, live, M, stride_xm):
    """One token's 8 activations of every code word (one vector load per word; x is small and stays in L1/L2),
    split into the word's column phases in registers, [1, BLOCK_N, W] each: with a token axis of 1, triton 3.6 keeps
    codes, statistics and activations in one layout (the 2-D form took 2.5x the barriers and 10-20% more
    instructions, tests/kernels/instruction_mix.py)."""
    live = live[None, :, :] & ((first * 0 + row) < M)[None, :, :]
    xw = tl.load(x_ptr + row * stride_xm + first[None, :, :, None] + tl.arange(0, 8), mask=live[:, :, :, None],
                 other=0.0).to(tl.float32)
    return column_phases(tl.reshape(xw, (1, first.shape[0], first.shape[1], 2, 2, 2)))


@launched
def _group_sparse_int4_gemv_kernel(x_ptr, gi_ptr, q_ptr, s_ptr, z_ptr, out_ptr, M, N, K, stride_xm, stride_om,
                                   KG, UNIT, map_ptr, ws_ptr, tk_ptr, M_BUCKET, GROUP: tl.constexpr,
                                   DOT_F32: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr,
                                   BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr = 1,
                                   STAGES: tl.constexpr = None, KG_ALIGN: tl.constexpr = 1):
    """Decode: 1-4 tokens per program walk their rows' KG*g kept codes, x gathered at each code's column (one token
    may split the kept codes among SPLIT_K programs, ``split_k_store``); 5-16 tokens walk the dense columns through
    the kept map for one tl.dot per step, the weight as the left operand, K split the same way. STAGES pipelines the
    1-4 token loops (``_configs``). KG_ALIGN: a power of two dividing KG (``kg_align``)."""
    KG = aligned(KG, KG_ALIGN)
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    b0 = tl.program_id(1) * BLOCK_B
    W: tl.constexpr = BLOCK_K // 8
    if (BLOCK_B == 16) & (GROUP >= 16) & ((GROUP & (GROUP - 1)) == 0):  # ``dense_walk``
        rb = b0 + tl.arange(0, BLOCK_B)
        k_lo, k_hi = split_k_range(K, BLOCK_K, SPLIT_K)
        acc_t = tl.zeros((BLOCK_N, BLOCK_B), tl.float32)
        HALF: tl.constexpr = (BLOCK_N >= 64) & (x_ptr.dtype.element_ty == tl.float16) & (
            s_ptr.dtype.element_ty == tl.float16)  # as int4: wgmma tiles take the half-precision path
        for k0 in range(k_lo, k_hi, BLOCK_K):
            x = load_x(x_ptr, rb, k0 + tl.arange(0, BLOCK_K), M, K, stride_xm)
            w, x = _group_sparse_int4_dense_tile(x, map_ptr, q_ptr, s_ptr, z_ptr, rn, k0, N, K, KG, UNIT, HALF,
                                                 GROUP, BLOCK_K)
            acc_t = weight_dot(w, x, acc_t, DOT_F32)
        split_k_store_tile(out_ptr, ws_ptr, tk_ptr, tl.trans(acc_t), rb, rn, M, N, stride_om, SPLIT_K)
    elif (GROUP % 8 == 0) & (BLOCK_B == 1):  # code words: one FFMA per code, no int-to-float conversion
        i_lo, i_hi = split_k_range(KG * GROUP, BLOCK_K, SPLIT_K)
        acc1 = tl.zeros((1, BLOCK_N, W), tl.float32)
        # scale and zero point folded into per-word sums (``word_stats``)
        for i0 in tl.range(i_lo, i_hi, BLOCK_K, num_stages=STAGES):
            words, first, live = _group_sparse_int4_word_slots(gi_ptr, q_ptr, rn, i0, N, KG, GROUP, BLOCK_K)
            slope, offset = word_stats(s_ptr, z_ptr, rn, i0 // 8, KG, N, GROUP, W)
            p, xsum = word_dot(words[None, :, :], _group_sparse_int4_word_x(x_ptr, b0, first, live, M, stride_xm),
                               UNIT)
            acc1 = (acc1 + p * slope[None, :, :]) - offset[None, :, :] * xsum  # two FFMAs
        part = tl.reshape(tl.sum(acc1, axis=2), (BLOCK_N,))
        split_k_store(out_ptr, ws_ptr, tk_ptr, part, b0, rn, M, N, stride_om, SPLIT_K)
    elif (GROUP % 8 == 0) & (BLOCK_B <= 4):  # 2-4 tokens: one accumulator per token
        c0 = tl.zeros((1, BLOCK_N, W), tl.float32)
        c1 = tl.zeros((1, BLOCK_N, W), tl.float32)
        c2 = tl.zeros((1, BLOCK_N, W), tl.float32)
        c3 = tl.zeros((1, BLOCK_N, W), tl.float32)
        # codes minus unit zeros once for all tokens (``word_units``)
        for i0 in tl.range(0, KG * GROUP, BLOCK_K, num_stages=STAGES):
            words, first, live = _group_sparse_int4_word_slots(gi_ptr, q_ptr, rn, i0, N, KG, GROUP, BLOCK_K)
            slope, zc = word_units(s_ptr, z_ptr, rn, i0 // 8, KG, N, GROUP, W)
            u = unit_codes(words[None, :, :], zc[None, :, :], UNIT)
            slope = slope[None, :, :]
            c0 = unit_dot(c0, u, _group_sparse_int4_word_x(x_ptr, b0, first, live, M, stride_xm), slope)
            c1 = unit_dot(c1, u, _group_sparse_int4_word_x(x_ptr, b0 + 1, first, live, M, stride_xm), slope)
            if BLOCK_B == 4:
                c2 = unit_dot(c2, u, _group_sparse_int4_word_x(x_ptr, b0 + 2, first, live, M, stride_xm), slope)
                c3 = unit_dot(c3, u, _group_sparse_int4_word_x(x_ptr, b0 + 3, first, live, M, stride_xm), slope)
        store_token_sums(out_ptr, ws_ptr, tk_ptr, tl.reshape(tl.sum(c0, axis=2), (BLOCK_N,)),
                         tl.reshape(tl.sum(c1, axis=2), (BLOCK_N,)), tl.reshape(tl.sum(c2, axis=2), (BLOCK_N,)),
                         tl.reshape(tl.sum(c3, axis=2), (BLOCK_N,)), b0, rn, M, N, stride_om, BLOCK_B, SPLIT_K)
    else:  # other groups: x gathered per code, token sub-blocks of at most 4 (16 tokens: four of them)
        SUB: tl.constexpr = BLOCK_B if BLOCK_B <= 4 else 4
        for t0 in tl.static_range(0, BLOCK_B, SUB):
            rs = b0 + t0 + tl.arange(0, SUB)
            acc = matvec_init(SUB, BLOCK_N, BLOCK_K)
            for i0 in tl.range(0, KG * GROUP, BLOCK_K, num_stages=STAGES):
                w, col, mask = _group_sparse_int4_kept(gi_ptr, q_ptr, s_ptr, z_ptr, rn, i0, N, KG, GROUP, BLOCK_K)
                if SUB == 1:  # one token (the grid has exactly M): x gathered as [BLOCK_N, BLOCK_K]
                    x = tl.load(x_ptr + b0 * stride_xm + col, mask=mask, other=0.0)
                    acc += x.to(tl.float32) * w
                else:  # matvec_init's [SUB, BLOCK_N, BLOCK_K] partials, reduced once after the loop
                    xmask = (rs[:, None, None] < M) & mask[None, :, :]
                    x = tl.load(x_ptr + rs[:, None, None] * stride_xm + col[None, :, :], mask=xmask, other=0.0)
                    acc += x.to(tl.float32) * w[None, :, :]
            store_out(out_ptr, matvec_finish(acc, SUB), rs, rn, M, N, stride_om)


@triton.jit
def _group_sparse_int4_dequant_kernel(w_ptr, map_ptr, q_ptr, s_ptr, z_ptr, N, K, KG, GROUP: tl.constexpr,
                                      BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """The dense weight tile by tile, dropped groups as zeros, in contiguous stores (the large-batch ``dense``
    regime; GROUP a power of two >= 16)."""
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    k0 = tl.program_id(1) * BLOCK_K
    w = _group_sparse_int4_dense_exact(map_ptr, q_ptr, s_ptr, z_ptr, rn, k0, N, K, KG, GROUP, BLOCK_K)
    store_tile(w_ptr, w, rn, k0 + tl.arange(0, BLOCK_K), N, K)


@triton.jit
def _group_sparse_int4_scatter_kernel(w_ptr, gi_ptr, q_ptr, s_ptr, z_ptr, N, K, KG, GROUP: tl.constexpr,
                                      BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Other groups: scatter the kept groups into a zero-filled dense ``[N, K]`` buffer."""
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    i0 = tl.program_id(1) * BLOCK_K
    w, col, mask = _group_sparse_int4_kept(gi_ptr, q_ptr, s_ptr, z_ptr, rn, i0, N, KG, GROUP, BLOCK_K)
    tl.store(w_ptr + rn[:, None] * K + col, w.to(w_ptr.dtype.element_ty), mask=mask)


@launched
def _group_sparse_int4_gemm_kernel(x_ptr, gi_ptr, q_ptr, s_ptr, z_ptr, out_ptr, M, N, K, stride_xm, stride_om,
                                   KG, UNIT, map_ptr, ws_ptr, tk_ptr, M_BUCKET, GROUP: tl.constexpr,
                                   DOT_F32: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                                   BLOCK_K: tl.constexpr, KG_ALIGN: tl.constexpr = 1):
    """Prefill: walk the dense columns; each step's tile comes from the kept map (dropped groups are zeros), so the
    steps' loads are independent of each other and pipelined (GROUP a power of two >= 16)."""
    KG = aligned(KG, KG_ALIGN)
    pid_m, pid_n = grouped_pid(M, N, BLOCK_M, BLOCK_N, 8)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    HALF: tl.constexpr = (BLOCK_M < 64) & (x_ptr.dtype.element_ty == tl.float16) & (
        s_ptr.dtype.element_ty == tl.float16)  # as int4: mma.sync tiles take the half-precision path
    for k0 in range(0, K, BLOCK_K):
        x = load_x(x_ptr, rm, k0 + tl.arange(0, BLOCK_K), M, K, stride_xm)
        w, x = _group_sparse_int4_dense_tile(x, map_ptr, q_ptr, s_ptr, z_ptr, rn, k0, N, K, KG, UNIT, HALF, GROUP,
                                             BLOCK_K)
        acc = dot_acc(x, tl.trans(w), acc, DOT_F32)
    store_out(out_ptr, acc, rm, rn, M, N, stride_om)


def kg_align(kg: int) -> int:
    """The largest power of two up to 16 dividing KG, for the kernels' ``aligned``: KG = 344 (W4S50 g16 at
    K = 11008) is no multiple of 16, and without it the decode loops load the per-row statistics one by one."""
    return math.gcd(kg, 16)


def dense_walk(group: int) -> bool:
    """Whether the kept-map kernels (prefill, 5-16 token decode, dequantize) take this group size."""
    return group >= 16 and group & (group - 1) == 0


KERNELS = KernelPair("group_sparse_int4", _group_sparse_int4_gemv_kernel, _group_sparse_int4_gemm_kernel,
                     _group_sparse_int4_dequant_kernel, cols_per_acc=8, split_k={1: 8, 16: dense_walk},
                     gathers_x=True)  # x at each kept code's column, per row


def _checked(packed: dict, device: torch.device, k: int) -> tuple[int, int, int]:
    """(N, KG, group) of a well-formed group_sparse_int4 packed weight on ``device`` for K = ``k`` columns."""
    specs = {"group_idx": (torch.int16,), "qweight": (torch.uint8,), "scales": FLOATS, "zeros": (torch.uint8,)}
    check_packed(packed, specs, device, "group_sparse_int4")
    n, kg = packed["group_idx"].shape
    width = packed["qweight"].shape[1] * 2
    if kg == 0 or width % kg:
        raise UserInputError(f"group_sparse_int4 kernel: qweight {tuple(packed['qweight'].shape)} does not hold "
                             f"{kg} whole groups; re-pack the layer")
    group = width // kg
    if k % group or k // group < kg:
        raise UserInputError(f"group_sparse_int4 kernel: {k} input features are not {kg}+ groups of {group}; "
                             "pass the layer's own input")
    for name in ("scales", "zeros"):
        expect_shape(packed[name], (n, kg), name, "group_sparse_int4")
    return n, kg, group


NAMES = ("group_idx", "qweight", "scales", "zeros")


def _tensors(packed: dict) -> tuple:
    return tuple(packed[name] for name in NAMES)


def group_sparse_int4_dequantize(packed: dict, dtype: torch.dtype, in_features: int,
                                 out: Tensor | None = None) -> Tensor:
    """The dense weight ``[N, in_features]`` in ``dtype`` (``formats.group_sparse_int4.unpack`` in ``dtype``),
    written into ``out`` when given."""
    gi = packed["group_idx"]
    n, kg, group = _checked(packed, gi.device, in_features)
    return _dequantize(packed, _walk_map(gi, in_features, group), group, dtype, in_features, out)


def _walk_map(group_idx: Tensor, k: int, group: int) -> Tensor | None:
    """The kept map the dense-walk kernels read (cached per weight), or None for groups they cannot take."""
    return kept_map(group_idx, k // group) if dense_walk(group) else None


def _dequantize(packed: dict, kmap: Tensor | None, group: int, dtype: torch.dtype, k: int,
                out: Tensor | None) -> Tensor:
    """Dense walk (every column written, contiguously) when the group size allows a kept map, else a scatter of
    the kept groups into a zeroed buffer."""
    n, kg = packed["group_idx"].shape
    w = dense_buffer(out, n, k, dtype, packed["qweight"].device)
    if kmap is not None:
        args = (w, kmap, *_tensors(packed)[1:], n, k, kg)
        KERNELS.run_dequant(args, n, k, {"GROUP": group})
    else:
        KERNELS.run_dequant((w.zero_(), *_tensors(packed), n, k, kg), n, kg * group, {"GROUP": group},
                            _group_sparse_int4_scatter_kernel)
    return w


def group_sparse_int4_matmul(x: Tensor, packed: dict, *, out: Tensor | None = None,
                             regime: str | None = None) -> Tensor:
    """``x @ W.T`` for a ``group_sparse_int4`` packed weight; x ``[..., K]`` fp16/bf16 → ``[..., N]``.

    K is x's last dimension (the packed tensors hold only kept groups). ``regime``: None follows kernels/select.py;
    "gemv", "gemm" or "dense" force one. The GEMM kernel and the 5-16 token decode path walk the dense columns
    through the kept map (kernels/_kept_map.py, built once per weight), which needs g >= 16 and a power of two;
    other groups run the GEMV kernel's gather paths over batch blocks instead.
    """
    return KERNELS.matmul(x, prepare(packed, x.device, x.shape[-1]), out, regime)


def prepare(packed: dict, device: torch.device, k: int) -> Call:
    """The checked launch for ``k`` input features on ``device`` (K is not stored: the caller's input width, checked
    against the packed shapes) with its kept map, built once per ``PackedLinear`` (see ``int4.prepare``)."""
    n, kg, group = _checked(packed, device, k)
    gi = packed["group_idx"]
    ws, tickets = split_k_buffers(device)
    kmap = _walk_map(gi, k, group)
    # an int32 placeholder (unread) where no path walks the map, so the kernel's signature stays the same
    extra = (kg, UNIT, tickets if kmap is None else kmap, ws, tickets)  # the GEMM launch appends M_BUCKET

    def rows(r0: int, r1: int, buf: Tensor) -> Tensor:
        return _dequantize(row_slice(packed, NAMES, r0, r1), None if kmap is None else kmap[r0:r1], group, buf.dtype,
                           k, buf)

    return Call(_tensors(packed), n, k, {"GROUP": group, "KG_ALIGN": kg_align(kg)},
                lambda dtype: _dequantize(packed, kmap, group, dtype, k, None), extra=extra,
                gemm_ok=dense_walk(group), dequantize_rows=rows)
