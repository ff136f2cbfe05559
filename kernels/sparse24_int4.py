"""Triton kernels for ``sparse24_int4``: 2:4 sparsity (2 kept in every 4) on top of int4 group quantization.

Layout (docs/FORMATS.md): ``qvalues: [N, K/4] uint8`` — nibble-packed codes of the kept values in column order, so
byte g of a row holds both kept codes of column group g (columns 4g..4g+3); ``meta: [N, K/8] uint8`` — kept positions
p0 < p1 as the nibble ``p0 | p1 << 2``, two groups per byte; ``scales: [N, K/g]``, ``zeros: [N, K/g] uint8`` over
original columns. Worked example: columns 0..3 = [0, a, 0, b] give p0 = 1, p1 = 3, nibble 0b1101 = 13; with codes
a = 5, b = 9 the qvalues byte is 0x95.

The kernels read 4.5 bits per kept weight (~2.3 bits per dense weight plus scales). 1-4 tokens: per column group
the two kept codes multiply the activations at their positions, picked from the group's four (loaded once,
contiguously) by register selects; with GROUP % 16 == 0 the codes come as 32-bit words (8 kept codes, one FFMA
each per token) and the positions as 16-bit metadata words. 5-16 tokens rebuild the dense tile in registers from
the same words (the kept codes decoded first, then placed) for one padded tl.dot, with K split among programs as
for one token; other groups take byte-wise versions of both paths. The byte ratio against fp16 is the batch-1
speed limit (~5.1x at g128); Sparse-Marlin (Frantar et al. 2024, arXiv:2408.11743) reaches it on Ampere. The
selects cost about as many instructions per dense weight as int4's word path (tests/kernels/instruction_mix.py), so
on an instruction-bound GPU this format is not faster than int4 at batch 1 despite its fewer bytes.

Deviation: the prefill kernel multiplies the rebuilt dense tile with tl.dot, because Triton exposes no sparse
tensor-core MMA (mma.sp); it saves memory traffic but not FLOPs, so at large batch the dispatcher prefers dense
cuBLAS or PyTorch's semi-structured path (kernels/select.py).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from llmprune.errors import UserInputError
from llmprune.formats.sparse24_int4 import matmul_ref as reference  # noqa: F401  (the oracle the tests compare against)

from ._codes import (
    UNIT, code_float, code_unit, column_phases, half_pairs, half_stats, offset_zero, unit_codes, unit_dot,
    word_dot, word_scale_zero, word_stats, word_units,
)
from ._configs import launched
from ._launch import (  # noqa: F401 (supports: dispatch hook)
    FLOATS, Call, check_packed, dense_buffer, expect_shape, KernelPair, row_slice, split_k_buffers, supports,
    word_aligned,
)
from ._tiles import (
    dot_acc, expand_groups, grouped_pid, load_rows, load_x, matvec_finish, matvec_init, matvec_step, nibbles,
    per_column, per_group, row_live, split_k_range, split_k_store_tile, store_out, store_tile, store_token_sums,
    two_four_expand, weight_dot,
)


@triton.jit
def _sparse24_int4_kept(q_ptr, m_ptr, s_ptr, z_ptr, rn, k0, N, K, GROUP: tl.constexpr, BLOCK_K: tl.constexpr):
    """(wa, wb, nib), each [BLOCK_N, BLOCK_K/4]: the two kept weights of every column group of 4, dequantized to
    float32 (GROUP % 4 == 0 keeps a group under one scale), and the group's position nibble ``p0 | p1 << 2`` with
    p0 in {0, 1, 2} < p1 in {1, 2, 3}. Per row, BLOCK_K/4 code bytes and BLOCK_K/8 meta bytes load contiguously."""
    G: tl.constexpr = BLOCK_K // 4
    ok = rn < N
    qb = load_rows(q_ptr, rn, N, k0 // 4, K // 4, K // 4, 0, G).to(tl.int32)
    nib = nibbles(load_rows(m_ptr, rn, N, k0 // 8, K // 8, K // 8, 0, G // 2).to(tl.int32))
    scale = per_column(s_ptr, rn, ok, k0 // 4, K // GROUP, 0.0, GROUP // 4, G).to(tl.float32)
    zero = expand_groups(offset_zero(per_group(z_ptr, rn, ok, k0 // 4, K // GROUP, 0, GROUP // 4, G)), GROUP // 4, G)
    return (code_float(qb & 0xF) - zero) * scale, (code_float(qb >> 4) - zero) * scale, nib


@triton.jit
def _sparse24_int4_tile(q_ptr, m_ptr, s_ptr, z_ptr, rn, k0, N, K, GROUP: tl.constexpr, BLOCK_K: tl.constexpr):
    """Dense W[rn, k0 : k0+BLOCK_K] in float32, zero at pruned columns. GROUP % 4 == 0: the two kept codes of each
    column group are dequantized first (``_sparse24_int4_kept``, half the arithmetic of dequantizing the expanded
    tile) and then placed at their positions in registers; other groups dequantize per expanded column."""
    if GROUP % 4 == 0:
        wa, wb, nib = _sparse24_int4_kept(q_ptr, m_ptr, s_ptr, z_ptr, rn, k0, N, K, GROUP, BLOCK_K)
        return two_four_expand(wa, wb, nib, 0.0)
    else:
        qb = load_rows(q_ptr, rn, N, k0 // 4, K // 4, K // 4, 0, BLOCK_K // 4).to(tl.int32)
        nib = nibbles(load_rows(m_ptr, rn, N, k0 // 8, K // 8, K // 8, 0, BLOCK_K // 8).to(tl.int32))
        code = two_four_expand(qb & 0xF, qb >> 4, nib, -1)
        ok = rn < N
        scale = per_column(s_ptr, rn, ok, k0, K // GROUP, 0.0, GROUP, BLOCK_K).to(tl.float32)
        zero = expand_groups(offset_zero(per_group(z_ptr, rn, ok, k0, K // GROUP, 0, GROUP, BLOCK_K)), GROUP, BLOCK_K)
        return tl.where(code >= 0, (code_float(code) - zero) * scale, 0.0)


@triton.jit
def _sparse24_int4_place(wa, wb, nib):
    """The four dense weights of column groups whose kept pair (wa, wb) sits at positions p0 = nib & 3 < p1 = nib >> 2
    (p0 <= 2, p1 >= 1): six selects, zero at the pruned positions."""
    p0 = nib & 3
    p1 = nib >> 2
    d0 = tl.where(p0 == 0, wa, 0.0)
    d1 = tl.where(p0 == 1, wa, tl.where(p1 == 1, wb, 0.0))
    d2 = tl.where(p0 == 2, wa, tl.where(p1 == 2, wb, 0.0))
    d3 = tl.where(p1 == 3, wb, 0.0)
    return d0, d1, d2, d3


@triton.jit
def _sparse24_int4_code_words(q_ptr, m_ptr, rn, k0, N, K, BLOCK_K: tl.constexpr):
    """(codes, meta), each [BLOCK_N, BLOCK_K/16] int32, for GROUP % 16 == 0: a 32-bit word of codes holds the kept
    pairs of four column groups (16 dense columns), a 16-bit word of metadata their positions."""
    W: tl.constexpr = BLOCK_K // 16
    words = load_rows(q_ptr.to(tl.pointer_type(tl.int32)), rn, N, k0 // 16, K // 16, K // 16, 0, W)
    meta = load_rows(m_ptr.to(tl.pointer_type(tl.uint16)), rn, N, k0 // 16, K // 16, K // 16, 0, W)
    return words, meta.to(tl.int32)


@triton.jit
def _sparse24_int4_word_tile(q_ptr, m_ptr, s_ptr, z_ptr, rn, k0, N, K, unit, GROUP: tl.constexpr,
                             BLOCK_K: tl.constexpr):
    """Dense W[rn, k0 : k0+BLOCK_K] in float32 for tl.dot (GROUP % 16 == 0): a 32-bit word of codes holds the kept
    pairs of four column groups (16 columns), a 16-bit word of metadata their positions; each kept code is one
    FFMA (``code_unit``, ``word_stats``), placed by selects and interleaved into column order by joins."""
    W: tl.constexpr = BLOCK_K // 16
    words, meta = _sparse24_int4_code_words(q_ptr, m_ptr, rn, k0, N, K, BLOCK_K)
    slope, offset = word_stats(s_ptr, z_ptr, rn, k0 // 16, K // GROUP, N, GROUP // 2, W)  # 16 columns a word
    a0, a1, a2, a3 = _sparse24_int4_place(code_unit(words, 0, unit) * slope - offset,
                                          code_unit(words, 1, unit) * slope - offset, meta & 0xF)
    b0, b1, b2, b3 = _sparse24_int4_place(code_unit(words, 2, unit) * slope - offset,
                                          code_unit(words, 3, unit) * slope - offset, (meta >> 4) & 0xF)
    c0, c1, c2, c3 = _sparse24_int4_place(code_unit(words, 4, unit) * slope - offset,
                                          code_unit(words, 5, unit) * slope - offset, (meta >> 8) & 0xF)
    e0, e1, e2, e3 = _sparse24_int4_place(code_unit(words, 6, unit) * slope - offset,
                                          code_unit(words, 7, unit) * slope - offset, (meta >> 12) & 0xF)
    # join appends a minor axis: pairing values 8 columns apart first makes t[n, w, i, j, k, l] column
    # 16w + 8i + 4j + 2k + l, the order a row-major reshape reads
    t = tl.join(tl.join(tl.join(tl.join(a0, c0), tl.join(b0, e0)), tl.join(tl.join(a2, c2), tl.join(b2, e2))),
                tl.join(tl.join(tl.join(a1, c1), tl.join(b1, e1)), tl.join(tl.join(a3, c3), tl.join(b3, e3))))
    return tl.reshape(t, (rn.shape[0], BLOCK_K))


@triton.jit
def _sparse24_int4_kept_at(wz, meta, G: tl.constexpr, OFF: tl.constexpr):
    """Column group G's kept codes (XOR-ed with the zero point, ``wz``) shifted to their dense nibbles p0, p1 within
    a 16-bit half (OFF 0 or 16) of a dense word: (a ^ z) << 4 p0 ^ (b ^ z) << 4 p1."""
    m = meta >> (4 * G)
    s0 = ((m << 2) & 0xC) | OFF
    s1 = (m & 0xC) | OFF
    return (((wz >> (8 * G)) & 0xF) << s0) ^ (((wz >> (8 * G + 4)) & 0xF) << s1)


@triton.jit
def _sparse24_int4_half_tile(q_ptr, m_ptr, s_ptr, z_ptr, rn, k0, N, K, unit, GROUP: tl.constexpr,
                             BLOCK_K: tl.constexpr):
    """Dense W[rn, k0 : k0+BLOCK_K] in fp16 (fp16 x and scales, GROUP % 16 == 0), columns in ``_sparse24_int4_order``:
    the kept codes of each 16-column word placed into two dense int4 words by integer operations (the zero point in
    every nibble, so pruned weights dequantize to exactly 0, and each kept code XOR-ed into its position), each
    dense word dequantized two weights per instruction (``half_pairs``); exactly the reference's weights rounded once
    to fp16, with no float placement by selects (``_sparse24_int4_place``)."""
    W: tl.constexpr = BLOCK_K // 16
    words, meta = _sparse24_int4_code_words(q_ptr, m_ptr, rn, k0, N, K, BLOCK_K)
    scale, zero = word_scale_zero(s_ptr, z_ptr, rn, k0 // 16, K // GROUP, N, GROUP // 2, W)  # 16 columns a word
    z8 = expand_groups(zero.to(tl.int32), GROUP // 16, W) * 0x11111111
    wz = words ^ z8
    lo = z8 ^ _sparse24_int4_kept_at(wz, meta, 0, 0) ^ _sparse24_int4_kept_at(wz, meta, 1, 16)
    hi = z8 ^ _sparse24_int4_kept_at(wz, meta, 2, 0) ^ _sparse24_int4_kept_at(wz, meta, 3, 16)
    s, z = half_stats(scale, zero, GROUP // 2, W)
    t = tl.join((half_pairs(lo, unit, True) - z) * s, (half_pairs(hi, unit, True) - z) * s)  # [BN, W, 4, 2, 2]
    return tl.reshape(t, (rn.shape[0], BLOCK_K))


@triton.jit
def _sparse24_int4_order(x, BLOCK_K: tl.constexpr):
    """x [B, BLOCK_K] in ``_sparse24_int4_half_tile``'s column order: tile column 16w + 4j + 2h + d holds column
    16w + 8d + 4h + j (dense word d of the 16 columns, nibble j + 4h of it)."""
    t = tl.permute(tl.reshape(x, (x.shape[0], BLOCK_K // 16, 2, 2, 4)), (0, 1, 4, 3, 2))
    return tl.reshape(t, (x.shape[0], BLOCK_K))


@triton.jit
def _sparse24_int4_select_dot(acc, x_ptr, row, k0, M, K, stride_xm, wa, wb, p0, p1, BLOCK_K: tl.constexpr):
    """``acc`` + wa * x[row, 4g + p0] + wb * x[row, 4g + p1] for every column group g of the step, without
    rebuilding the dense tile: x is loaded once, contiguously, and each group's two activations are picked from its
    four by register selects (an earlier version gathered x at each kept position: two scalar loads per code byte,
    tests/kernels/instruction_mix.py)."""
    G: tl.constexpr = BLOCK_K // 4
    cols = k0 + tl.arange(0, BLOCK_K)
    live = (cols < K) & row_live(cols, row, M)
    x = tl.load(x_ptr + row * stride_xm + cols, mask=live, other=0.0).to(tl.float32)
    even, odd = tl.split(tl.reshape(x, (G, 2, 2)))  # [G, 2]: positions (0, 2) and (1, 3) of each group
    x0, x2 = tl.split(even)
    x1, x3 = tl.split(odd)
    xa = tl.where(p0 == 0, x0[None, :], tl.where(p0 == 1, x1[None, :], x2[None, :]))
    xb = tl.where(p1 == 3, x3[None, :], tl.where(p1 == 2, x2[None, :], x1[None, :]))
    return acc + wa * xa + wb * xb


@triton.jit
def _sparse24_int4_pick(x0, x1, x2, x3, meta, I: tl.constexpr):
    """(x at p0, x at p1) of column group I of each 16-column word: positions p0 = meta bits 4I..4I+1 (0-2) and
    p1 = bits 4I+2..4I+3 (1-3) compared in place (no shift), x0..x3 [W] the group's four activations."""
    p0 = meta & (3 << (4 * I))
    p1 = meta & (12 << (4 * I))
    xa = tl.where(p0 == 0, x0[None, :], tl.where(p0 == (1 << (4 * I)), x1[None, :], x2[None, :]))
    xb = tl.where(p1 == (12 << (4 * I)), x3[None, :], tl.where(p1 == (8 << (4 * I)), x2[None, :], x1[None, :]))
    return xa, xb


@triton.jit
def _sparse24_int4_picked(x_ptr, row, k0, M, K, stride_xm, meta, BLOCK_K: tl.constexpr):
    """One token's activations at the kept positions of each 16-column code word (4 column groups, 8 kept codes;
    GROUP % 16 == 0), in code order: x is loaded once, contiguously, split into its 16 column phases in registers,
    and each kept code's activation picked by selects on the 16-bit metadata word. The byte-wise path
    (``_sparse24_int4_select_dot``) extracted positions by shifts and dequantized each code with a subtract and a
    multiply (tests/kernels/instruction_mix.py)."""
    W: tl.constexpr = BLOCK_K // 16
    cols = k0 + tl.arange(0, BLOCK_K)
    live = (cols < K) & row_live(cols, row, M)
    x = tl.load(x_ptr + row * stride_xm + cols, mask=live, other=0.0).to(tl.float32)
    even, odd = tl.split(tl.reshape(x, (W, 2, 2, 2, 2)))  # x[w, a, b, c, d] is column 16w + 8a + 4b + 2c + d
    e0, e1, e2, e3, e4, e5, e6, e7 = column_phases(even)  # column 16w + 2j
    o0, o1, o2, o3, o4, o5, o6, o7 = column_phases(odd)  # column 16w + 2j + 1
    a0, b0 = _sparse24_int4_pick(e0, o0, e1, o1, meta, 0)
    a1, b1 = _sparse24_int4_pick(e2, o2, e3, o3, meta, 1)
    a2, b2 = _sparse24_int4_pick(e4, o4, e5, o5, meta, 2)
    a3, b3 = _sparse24_int4_pick(e6, o6, e7, o7, meta, 3)
    return a0, b0, a1, b1, a2, b2, a3, b3


@launched
def _sparse24_int4_gemv_kernel(x_ptr, q_ptr, m_ptr, s_ptr, z_ptr, out_ptr, M, N, K, stride_xm, stride_om, UNIT,
                               ws_ptr, tk_ptr, M_BUCKET, GROUP: tl.constexpr, DOT_F32: tl.constexpr,
                               BLOCK_B: tl.constexpr,
                               BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr = 1,
                               STAGES: tl.constexpr = None):
    """Decode: BLOCK_N rows per program, K streamed in BLOCK_K dense columns (BLOCK_K/4 packed bytes per row); one
    token may split K among SPLIT_K programs (``split_k_store``); STAGES pipelines the 1-4 token loops."""
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rb = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    if BLOCK_B <= 4 and GROUP % 16 == 0:  # 1-4 tokens: code words, x picked per token by selects
        W: tl.constexpr = BLOCK_K // 16
        b0 = tl.program_id(1) * BLOCK_B
        c0 = tl.zeros((BLOCK_N, W), tl.float32)  # one 2-D accumulator per token (see below)
        c1 = tl.zeros((BLOCK_N, W), tl.float32)
        c2 = tl.zeros((BLOCK_N, W), tl.float32)
        c3 = tl.zeros((BLOCK_N, W), tl.float32)
        k_lo, k_hi = split_k_range(K, BLOCK_K, SPLIT_K)  # the whole of K unless this launch splits (one token)
        for k0 in tl.range(k_lo, k_hi, BLOCK_K, num_stages=STAGES):
            words, meta = _sparse24_int4_code_words(q_ptr, m_ptr, rn, k0, N, K, BLOCK_K)
            if BLOCK_B == 1:  # scale and zero point folded into per-word sums (``word_stats``): fewer instructions
                slope, offset = word_stats(s_ptr, z_ptr, rn, k0 // 16, K // GROUP, N, GROUP // 2, W)
                p, xsum = word_dot(words, _sparse24_int4_picked(x_ptr, b0, k0, M, K, stride_xm, meta, BLOCK_K), UNIT)
                c0 = (c0 + p * slope) - offset * xsum
            else:  # codes minus unit zeros once for all tokens (``word_units``): no per-token sums of x
                slope, zc = word_units(s_ptr, z_ptr, rn, k0 // 16, K // GROUP, N, GROUP // 2, W)
                u = unit_codes(words, zc, UNIT)
                c0 = unit_dot(c0, u, _sparse24_int4_picked(x_ptr, b0, k0, M, K, stride_xm, meta, BLOCK_K), slope)
                c1 = unit_dot(c1, u, _sparse24_int4_picked(x_ptr, b0 + 1, k0, M, K, stride_xm, meta, BLOCK_K), slope)
                if BLOCK_B == 4:
                    c2 = unit_dot(c2, u, _sparse24_int4_picked(x_ptr, b0 + 2, k0, M, K, stride_xm, meta, BLOCK_K),
                                  slope)
                    c3 = unit_dot(c3, u, _sparse24_int4_picked(x_ptr, b0 + 3, k0, M, K, stride_xm, meta, BLOCK_K),
                                  slope)
        store_token_sums(out_ptr, ws_ptr, tk_ptr, tl.sum(c0, axis=1), tl.sum(c1, axis=1), tl.sum(c2, axis=1),
                         tl.sum(c3, axis=1), b0, rn, M, N, stride_om, BLOCK_B, SPLIT_K)
    elif BLOCK_B <= 4 and GROUP % 4 == 0:  # 1-4 tokens: kept weights decoded once, x picked per token by selects
        b0 = tl.program_id(1) * BLOCK_B
        a0 = tl.zeros((BLOCK_N, BLOCK_K // 4), tl.float32)  # one 2-D accumulator per token: 3-D broadcasts
        a1 = tl.zeros((BLOCK_N, BLOCK_K // 4), tl.float32)  # compiled to scalar loads on triton 3.6
        a2 = tl.zeros((BLOCK_N, BLOCK_K // 4), tl.float32)
        a3 = tl.zeros((BLOCK_N, BLOCK_K // 4), tl.float32)
        k_lo, k_hi = split_k_range(K, BLOCK_K, SPLIT_K)  # the whole of K unless this launch splits (one token)
        for k0 in tl.range(k_lo, k_hi, BLOCK_K, num_stages=STAGES):
            wa, wb, nib = _sparse24_int4_kept(q_ptr, m_ptr, s_ptr, z_ptr, rn, k0, N, K, GROUP, BLOCK_K)
            p0, p1 = nib & 3, nib >> 2
            a0 = _sparse24_int4_select_dot(a0, x_ptr, b0, k0, M, K, stride_xm, wa, wb, p0, p1, BLOCK_K)
            if BLOCK_B >= 2:
                a1 = _sparse24_int4_select_dot(a1, x_ptr, b0 + 1, k0, M, K, stride_xm, wa, wb, p0, p1, BLOCK_K)
            if BLOCK_B == 4:
                a2 = _sparse24_int4_select_dot(a2, x_ptr, b0 + 2, k0, M, K, stride_xm, wa, wb, p0, p1, BLOCK_K)
                a3 = _sparse24_int4_select_dot(a3, x_ptr, b0 + 3, k0, M, K, stride_xm, wa, wb, p0, p1, BLOCK_K)
        store_token_sums(out_ptr, ws_ptr, tk_ptr, tl.sum(a0, axis=1), tl.sum(a1, axis=1), tl.sum(a2, axis=1),
                         tl.sum(a3, axis=1), b0, rn, M, N, stride_om, BLOCK_B, SPLIT_K)
    elif GROUP % 16 == 0:  # 5-16 tokens: code-word tiles, the weight as tl.dot's left operand, K split as for one
        k_lo, k_hi = split_k_range(K, BLOCK_K, SPLIT_K)
        acc_t = tl.zeros((BLOCK_N, BLOCK_B), tl.float32)
        FP16: tl.constexpr = (x_ptr.dtype.element_ty == tl.float16) & (s_ptr.dtype.element_ty == tl.float16)
        for k0 in range(k_lo, k_hi, BLOCK_K):
            x = load_x(x_ptr, rb, k0 + tl.arange(0, BLOCK_K), M, K, stride_xm)
            if (BLOCK_N >= 64) & FP16:  # wgmma tiles, as int4's
                w = _sparse24_int4_half_tile(q_ptr, m_ptr, s_ptr, z_ptr, rn, k0, N, K, UNIT, GROUP, BLOCK_K)
                x = _sparse24_int4_order(x, BLOCK_K)
            else:
                w = _sparse24_int4_word_tile(q_ptr, m_ptr, s_ptr, z_ptr, rn, k0, N, K, UNIT, GROUP, BLOCK_K)
            acc_t = weight_dot(w, x, acc_t, DOT_F32)
        split_k_store_tile(out_ptr, ws_ptr, tk_ptr, tl.trans(acc_t), rb, rn, M, N, stride_om, SPLIT_K)
    else:
        acc = matvec_init(BLOCK_B, BLOCK_N, BLOCK_K)
        for k0 in tl.range(0, K, BLOCK_K, num_stages=STAGES):
            w = _sparse24_int4_tile(q_ptr, m_ptr, s_ptr, z_ptr, rn, k0, N, K, GROUP, BLOCK_K)
            x = load_x(x_ptr, rb, k0 + tl.arange(0, BLOCK_K), M, K, stride_xm)
            acc = matvec_step(acc, x, w, BLOCK_B, DOT_F32)
        store_out(out_ptr, matvec_finish(acc, BLOCK_B), rb, rn, M, N, stride_om)


@launched
def _sparse24_int4_gemm_kernel(x_ptr, q_ptr, m_ptr, s_ptr, z_ptr, out_ptr, M, N, K, stride_xm, stride_om, UNIT,
                               ws_ptr, tk_ptr, M_BUCKET,
                               GROUP: tl.constexpr, DOT_F32: tl.constexpr,
                               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Prefill: tl.dot of the activation tile with the rebuilt dense W tile (transposed in registers; from code
    words when GROUP % 16 == 0: ~36 instead of ~44 loop instructions per weight byte on sm_90)."""
    pid_m, pid_n = grouped_pid(M, N, BLOCK_M, BLOCK_N, 8)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    FP16: tl.constexpr = (x_ptr.dtype.element_ty == tl.float16) & (s_ptr.dtype.element_ty == tl.float16)
    for k0 in range(0, K, BLOCK_K):
        x = load_x(x_ptr, rm, k0 + tl.arange(0, BLOCK_K), M, K, stride_xm)
        if (GROUP % 16 == 0) & FP16:
            w = _sparse24_int4_half_tile(q_ptr, m_ptr, s_ptr, z_ptr, rn, k0, N, K, UNIT, GROUP, BLOCK_K)
            x = _sparse24_int4_order(x, BLOCK_K)
        elif GROUP % 16 == 0:
            w = _sparse24_int4_word_tile(q_ptr, m_ptr, s_ptr, z_ptr, rn, k0, N, K, UNIT, GROUP, BLOCK_K)
        else:
            w = _sparse24_int4_tile(q_ptr, m_ptr, s_ptr, z_ptr, rn, k0, N, K, GROUP, BLOCK_K)
        acc = dot_acc(x, tl.trans(w), acc, DOT_F32)
    store_out(out_ptr, acc, rm, rn, M, N, stride_om)


@triton.jit
def _sparse24_int4_dequant_kernel(w_ptr, q_ptr, m_ptr, s_ptr, z_ptr, N, K, GROUP: tl.constexpr,
                                  BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """The dense weight tile by tile (zeros at pruned columns), for the large-batch ``dense`` regime."""
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    k0 = tl.program_id(1) * BLOCK_K
    w = _sparse24_int4_tile(q_ptr, m_ptr, s_ptr, z_ptr, rn, k0, N, K, GROUP, BLOCK_K)
    store_tile(w_ptr, w, rn, k0 + tl.arange(0, BLOCK_K), N, K)


KERNELS = KernelPair("sparse24_int4", _sparse24_int4_gemv_kernel, _sparse24_int4_gemm_kernel,
                     _sparse24_int4_dequant_kernel, cols_per_acc=4, split_k={1: 4, 16: 16})


def _checked(packed: dict, device: torch.device) -> tuple[int, int, int]:
    """(N, K, group) of a well-formed sparse24_int4 packed weight on ``device``."""
    specs = {"qvalues": (torch.uint8,), "meta": (torch.uint8,), "scales": FLOATS, "zeros": (torch.uint8,)}
    check_packed(packed, specs, device, "sparse24_int4")
    q, s = packed["qvalues"], packed["scales"]
    n, k, n_groups = q.shape[0], q.shape[1] * 4, s.shape[1]
    if k % 8:
        raise UserInputError(f"sparse24_int4 kernel: {k} columns is not a multiple of 8; 2:4 formats need in % 8 == 0")
    if n_groups == 0 or k % n_groups:
        raise UserInputError(f"sparse24_int4 kernel: {n_groups} scale groups do not divide {k} columns; re-pack")
    expect_shape(packed["meta"], (n, k // 8), "meta", "sparse24_int4")
    expect_shape(s, (n, n_groups), "scales", "sparse24_int4")
    expect_shape(packed["zeros"], (n, n_groups), "zeros", "sparse24_int4")
    return n, k, k // n_groups


NAMES = ("qvalues", "meta", "scales", "zeros")


def _tensors(packed: dict) -> tuple:
    return tuple(packed[name] for name in NAMES)


def sparse24_int4_dequantize(packed: dict, dtype: torch.dtype, out: Tensor | None = None) -> Tensor:
    """The dense weight ``[N, K]`` in ``dtype`` (equal to ``formats.sparse24_int4.unpack`` rounded to ``dtype``),
    written into ``out`` when given."""
    q = packed["qvalues"]
    n, k, group = _checked(packed, q.device)
    w = dense_buffer(out, n, k, dtype, q.device)
    KERNELS.run_dequant((w, *_tensors(packed), n, k), n, k, {"GROUP": group})
    return w


def prepare(packed: dict, device: torch.device, k: int) -> Call:
    """The checked launch on ``device``, built once per ``PackedLinear`` (see ``int4.prepare``; K is stored)."""
    n, k, group = _checked(packed, device)
    q, meta, scales, zeros = _tensors(packed)
    return Call((word_aligned(q), word_aligned(meta), scales, zeros), n, k, {"GROUP": group},
                lambda dtype: sparse24_int4_dequantize(packed, dtype),
                extra=(UNIT, *split_k_buffers(device)),  # UNIT: see _codes.code_unit
                dequantize_rows=lambda r0, r1, buf: sparse24_int4_dequantize(row_slice(packed, NAMES, r0, r1),
                                                                             buf.dtype, buf))


def sparse24_int4_matmul(x: Tensor, packed: dict, *, out: Tensor | None = None, regime: str | None = None) -> Tensor:
    """``x @ W.T`` for a ``sparse24_int4`` packed weight; x ``[..., K]`` fp16/bf16 → ``[..., N]`` in x's dtype.

    ``regime``: None follows kernels/select.py; "gemv", "gemm" or "dense" force one. ``out``: optional output.
    """
    return KERNELS.matmul(x, prepare(packed, x.device, x.shape[-1]), out, regime)
