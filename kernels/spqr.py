"""Triton kernels for ``spqr`` (Dettmers et al. 2023, arXiv:2306.03078): low-bit codes with bilevel group statistics,
fused with the correction for the 16-bit outliers.

Layout (llmprune/formats/spqr.py, docs/FORMATS.md): ``qweight: [N, ceil(K*bits/32)] int32`` — code j at bits
j*bits .. j*bits+bits-1 of the row's little-endian bit stream (a code may straddle two words); first-level
``scale_codes, zero_codes: [N, G] uint8`` (G = K/g1), dequantized with the second level ``scale_scale, scale_zero,
zero_scale, zero_zero: [R, G]`` of row block r // g2; outliers in CSR ``outlier_row_ptr [N+1] int32,
outlier_col [nnz] int16, outlier_val [nnz]`` overwrite their positions. Worked example (bits 3): codes
[5, 1, 7, 2] → word 0x5CD; code 10 of a row starts at bit 30 and takes 2 bits of word 0 and 1 bit of word 1.

The base pass rebuilds W from the bit stream and the bilevel statistics in registers (no first-level statistics
tensor is ever written); each program then walks its rows' outliers, several CSR slots per step on decode tiles
(independent loads: a few memory latencies per tile, not one per outlier), and adds (value - base weight) *
x[:, column], so the result equals x @ W.T with W exactly as ``unpack`` defines it. With ~1% outliers this second,
sparse pass is a few dozen gathered FMAs per row. Decode of 1-4 tokens with g1 % 16 == 0
reads each 32-code block as BITS whole words, so every code sits at a constant bit offset and becomes a float by
shifts and bit operations, one FFMA per code and token, statistics folded per 16-column half (``_spqr_word_block``;
one token may split K, the first split adding the outliers); 5-16 tokens and prefill build their tl.dot tiles
from the same words (``_spqr_word_tile``), and so does the dequantize kernel, bit-exact. Other groups rebuild the
tile code by code (``_spqr_block``).

Deviation: the SpQR reference kernel stores the outliers with their row-block order for warp-level parallelism;
ours keeps the plain CSR of the format and loops over slots, which is simpler and adequate at ~1% density.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from llmprune.errors import UserInputError
from llmprune.formats.spqr import matmul_ref as reference  # noqa: F401  (the oracle the tests compare against)

from ._codes import UNIT
from ._configs import launched
from ._launch import FLOATS, Call, cdiv, check_packed, expect_shape, KernelPair, split_k_buffers, supports  # noqa: F401 (hook)
from ._spqr_words import _spqr_scale_zero, _spqr_word_block, _spqr_word_dot, _spqr_word_tile
from ._tiles import (
    dot_acc, expand_groups, grouped_pid, load_x, matvec_finish, matvec_init, matvec_step, split_k_range,
    split_k_store, store_out, store_tile, weight_dot,
)

_STATS = ("scale_codes", "zero_codes", "scale_scale", "scale_zero", "zero_scale", "zero_zero")


@triton.jit
def _spqr_code(q_ptr, n2, k2, mask, WORDS, BITS: tl.constexpr):
    """Code W[n2, k2] from the row's little-endian bit stream, joining two words when it straddles them."""
    bit = k2 * BITS
    sh = bit % 32
    row = q_ptr + n2 * WORDS + bit // 32
    lo = tl.load(row, mask=mask, other=0).to(tl.uint32, bitcast=True) >> sh.to(tl.uint32)
    spill = mask & (sh + BITS > 32)
    hi = tl.load(row + 1, mask=spill, other=0).to(tl.uint32, bitcast=True)
    hi = tl.where(spill, hi << (32 - sh).to(tl.uint32), 0)
    return ((lo | hi) & ((1 << BITS) - 1)).to(tl.int32)


@triton.jit
def _spqr_tile(q_ptr, st_ptrs, n2, k2, mask, WORDS, G,
               BITS: tl.constexpr, GROUP: tl.constexpr, STAT_GROUP: tl.constexpr):
    """Base weight W[n2, k2] at arbitrary (row, column) pairs (float32), statistics rebuilt from the second level:
    the outlier pass needs it at scattered columns."""
    sc_ptr, zc_ptr, ss_ptr, sz_ptr, zs_ptr, zz_ptr = st_ptrs
    code = _spqr_code(q_ptr, n2, k2, mask, WORDS, BITS).to(tl.float32)
    first = n2 * G + k2 // GROUP
    second = (n2 // STAT_GROUP) * G + k2 // GROUP
    scale = (tl.load(sc_ptr + first, mask=mask, other=0).to(tl.float32)
             - tl.load(sz_ptr + second, mask=mask, other=0.0).to(tl.float32)) \
        * tl.load(ss_ptr + second, mask=mask, other=0.0).to(tl.float32)
    zero = (tl.load(zc_ptr + first, mask=mask, other=0).to(tl.float32)
            - tl.load(zz_ptr + second, mask=mask, other=0.0).to(tl.float32)) \
        * tl.load(zs_ptr + second, mask=mask, other=0.0).to(tl.float32)
    return (code - zero) * scale


@triton.jit
def _spqr_block(q_ptr, st_ptrs, rn, k0, N, K, WORDS, G,
                BITS: tl.constexpr, GROUP: tl.constexpr, STAT_GROUP: tl.constexpr, BLOCK_K: tl.constexpr):
    """Base W[rn, k0 : k0+BLOCK_K] (float32), decoded code by code."""
    rk = k0 + tl.arange(0, BLOCK_K)
    ok = rn < N
    code = _spqr_code(q_ptr, rn[:, None], rk[None, :], ok[:, None] & (rk[None, :] < K), WORDS, BITS)
    scale, zero = _spqr_scale_zero(st_ptrs, rn, ok, k0, G, GROUP, STAT_GROUP, BLOCK_K)
    return (code.to(tl.float32) - expand_groups(zero, GROUP, BLOCK_K)) * expand_groups(scale, GROUP, BLOCK_K)


@triton.jit
def _spqr_outliers(acc, x_ptr, rows, rn, M, N, stride_xm, q_ptr, st_ptrs, o_ptrs, WORDS, G,
                   BITS: tl.constexpr, GROUP: tl.constexpr, STAT_GROUP: tl.constexpr):
    """acc[b, n] += (val - base[n, col]) * x[b, col] over row n's outliers. Decode tiles take SLOTS CSR slots per
    step for all rows (their loads are independent, so a row's ~K/100 outliers cost a few memory latencies instead
    of one each: a slot per step left ~40 dependent steps after the K loop); tiles of more than 1024 outputs
    (prefill) keep one slot per step. The slot counts keep every decode config free of spills on sm_90
    (tests/kernels/compile_check.py --full --resources; 32 slots on 64-row one-token tiles spilled 192 B)."""
    rp_ptr, oc_ptr, ov_ptr = o_ptrs
    P: tl.constexpr = acc.shape[0] * acc.shape[1]
    SLOTS: tl.constexpr = 32 if P <= 32 else (8 if P <= 128 else (4 if P <= 1024 else 1))
    n_ok = rn < N
    start = tl.load(rp_ptr + rn, mask=n_ok, other=0)
    count = tl.load(rp_ptr + rn + 1, mask=n_ok, other=0) - start
    if SLOTS == 1:  # the 2-D form: the 3-D one with a slot axis of 1 doubled the prefill tiles' spills (528 B)
        for s in range(0, tl.max(count, axis=0)):
            live = s < count
            col = tl.load(oc_ptr + start + s, mask=live, other=0).to(tl.int32)
            val = tl.load(ov_ptr + start + s, mask=live, other=0.0).to(tl.float32)
            base = _spqr_tile(q_ptr, st_ptrs, rn, col, live, WORDS, G, BITS, GROUP, STAT_GROUP)
            xmask = (rows[:, None] < M) & live[None, :]
            xg = tl.load(x_ptr + rows[:, None] * stride_xm + col[None, :], mask=xmask, other=0.0).to(tl.float32)
            acc += xg * tl.where(live, val - base, 0.0)[None, :]
    else:
        for s0 in range(0, tl.max(count, axis=0), SLOTS):
            s = s0 + tl.arange(0, SLOTS)
            live = s[None, :] < count[:, None]  # [rows, slots]
            col = tl.load(oc_ptr + start[:, None] + s[None, :], mask=live, other=0).to(tl.int32)
            val = tl.load(ov_ptr + start[:, None] + s[None, :], mask=live, other=0.0).to(tl.float32)
            base = _spqr_tile(q_ptr, st_ptrs, rn[:, None], col, live, WORDS, G, BITS, GROUP, STAT_GROUP)
            xmask = (rows[:, None, None] < M) & live[None, :, :]
            xg = tl.load(x_ptr + rows[:, None, None] * stride_xm + col[None, :, :], mask=xmask, other=0.0)
            acc += tl.sum(xg.to(tl.float32) * tl.where(live, val - base, 0.0)[None, :, :], axis=2)
    return acc


@launched
def _spqr_gemv_kernel(x_ptr, q_ptr, sc_ptr, zc_ptr, ss_ptr, sz_ptr, zs_ptr, zz_ptr, rp_ptr, oc_ptr, ov_ptr, out_ptr,
                      M, N, K, stride_xm, stride_om, WORDS, G, UNIT, ws_ptr, tk_ptr, M_BUCKET,
                      BITS: tl.constexpr, GROUP: tl.constexpr, STAT_GROUP: tl.constexpr, DOT_F32: tl.constexpr,
                      BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                      SPLIT_K: tl.constexpr = 1, STAGES: tl.constexpr = None):
    """Decode: BLOCK_N rows per program stream the bit-packed codes, then add their outlier corrections; STAGES
    pipelines the 1-4 token loops (``_configs``)."""
    st_ptrs = (sc_ptr, zc_ptr, ss_ptr, sz_ptr, zs_ptr, zz_ptr)
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rb = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    o_ptrs = (rp_ptr, oc_ptr, ov_ptr)
    if BLOCK_B <= 4 and GROUP % 16 == 0:  # 1-4 tokens: whole-word code blocks, one FFMA per code and token
        k_lo, k_hi = split_k_range(K, BLOCK_K, SPLIT_K)  # the whole of K unless this launch splits (one token)
        b0 = tl.program_id(1) * BLOCK_B
        c0 = tl.zeros((BLOCK_K // 32, BLOCK_N), tl.float32)  # [blocks, rows], one per token
        c1 = tl.zeros((BLOCK_K // 32, BLOCK_N), tl.float32)
        c2 = tl.zeros((BLOCK_K // 32, BLOCK_N), tl.float32)
        c3 = tl.zeros((BLOCK_K // 32, BLOCK_N), tl.float32)
        for k0 in tl.range(k_lo, k_hi, BLOCK_K, num_stages=STAGES):
            words, stats = _spqr_word_block(q_ptr, st_ptrs, rn, k0, N, WORDS, G, BITS, GROUP, STAT_GROUP, BLOCK_K)
            c0 = _spqr_word_dot(c0, x_ptr, b0, k0, M, K, stride_xm, words, stats, UNIT, BITS, BLOCK_K)
            if BLOCK_B >= 2:
                c1 = _spqr_word_dot(c1, x_ptr, b0 + 1, k0, M, K, stride_xm, words, stats, UNIT, BITS, BLOCK_K)
            if BLOCK_B == 4:
                c2 = _spqr_word_dot(c2, x_ptr, b0 + 2, k0, M, K, stride_xm, words, stats, UNIT, BITS, BLOCK_K)
                c3 = _spqr_word_dot(c3, x_ptr, b0 + 3, k0, M, K, stride_xm, words, stats, UNIT, BITS, BLOCK_K)
        slot = tl.arange(0, BLOCK_B)[:, None]  # the tokens' sums as one [BLOCK_B, BLOCK_N] tile
        part = tl.where(slot == 0, tl.sum(c0, axis=0)[None, :], tl.where(slot == 1, tl.sum(c1, axis=0)[None, :],
                        tl.where(slot == 2, tl.sum(c2, axis=0)[None, :], tl.sum(c3, axis=0)[None, :])))
        if tl.program_id(2) == 0:  # the outliers once, in the first split
            part = _spqr_outliers(part, x_ptr, rb, rn, M, N, stride_xm, q_ptr, st_ptrs, o_ptrs, WORDS, G, BITS,
                                  GROUP, STAT_GROUP)
        if BLOCK_B == 1:
            split_k_store(out_ptr, ws_ptr, tk_ptr, tl.reshape(part, (BLOCK_N,)), b0, rn, M, N, stride_om, SPLIT_K)
        else:
            store_out(out_ptr, part, rb, rn, M, N, stride_om)
    elif GROUP % 16 == 0:  # 5-16 tokens: whole-word tiles, the weight as tl.dot's left operand
        acc_t = tl.zeros((BLOCK_N, BLOCK_B), tl.float32)
        for k0 in range(0, K, BLOCK_K):
            w = _spqr_word_tile(q_ptr, st_ptrs, rn, k0, N, WORDS, G, UNIT, BITS, GROUP, STAT_GROUP, BLOCK_K)
            acc_t = weight_dot(w, load_x(x_ptr, rb, k0 + tl.arange(0, BLOCK_K), M, K, stride_xm), acc_t, DOT_F32)
        acc = _spqr_outliers(tl.trans(acc_t), x_ptr, rb, rn, M, N, stride_xm, q_ptr, st_ptrs, o_ptrs, WORDS, G,
                             BITS, GROUP, STAT_GROUP)
        store_out(out_ptr, acc, rb, rn, M, N, stride_om)
    else:
        acc = matvec_init(BLOCK_B, BLOCK_N, BLOCK_K)
        for k0 in tl.range(0, K, BLOCK_K, num_stages=STAGES):
            w = _spqr_block(q_ptr, st_ptrs, rn, k0, N, K, WORDS, G, BITS, GROUP, STAT_GROUP, BLOCK_K)
            x = load_x(x_ptr, rb, k0 + tl.arange(0, BLOCK_K), M, K, stride_xm)
            acc = matvec_step(acc, x, w, BLOCK_B, DOT_F32)
        acc = _spqr_outliers(matvec_finish(acc, BLOCK_B), x_ptr, rb, rn, M, N, stride_xm, q_ptr, st_ptrs, o_ptrs,
                             WORDS, G, BITS, GROUP, STAT_GROUP)
        store_out(out_ptr, acc, rb, rn, M, N, stride_om)


@launched
def _spqr_gemm_kernel(x_ptr, q_ptr, sc_ptr, zc_ptr, ss_ptr, sz_ptr, zs_ptr, zz_ptr, rp_ptr, oc_ptr, ov_ptr, out_ptr,
                      M, N, K, stride_xm, stride_om, WORDS, G, UNIT, ws_ptr, tk_ptr, M_BUCKET,
                      BITS: tl.constexpr, GROUP: tl.constexpr, STAT_GROUP: tl.constexpr, DOT_F32: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Prefill: tl.dot on rebuilt base tiles, then the outlier correction of the tile's rows."""
    st_ptrs = (sc_ptr, zc_ptr, ss_ptr, sz_ptr, zs_ptr, zz_ptr)
    pid_m, pid_n = grouped_pid(M, N, BLOCK_M, BLOCK_N, 8)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for k0 in range(0, K, BLOCK_K):
        if GROUP % 16 == 0:
            w = _spqr_word_tile(q_ptr, st_ptrs, rn, k0, N, WORDS, G, UNIT, BITS, GROUP, STAT_GROUP, BLOCK_K)
        else:
            w = _spqr_block(q_ptr, st_ptrs, rn, k0, N, K, WORDS, G, BITS, GROUP, STAT_GROUP, BLOCK_K)
        acc = dot_acc(load_x(x_ptr, rm, k0 + tl.arange(0, BLOCK_K), M, K, stride_xm), tl.trans(w), acc, DOT_F32)
    acc = _spqr_outliers(acc, x_ptr, rm, rn, M, N, stride_xm, q_ptr, st_ptrs, (rp_ptr, oc_ptr, ov_ptr), WORDS, G,
                         BITS, GROUP, STAT_GROUP)
    store_out(out_ptr, acc, rm, rn, M, N, stride_om)


@triton.jit
def _spqr_dequant_kernel(w_ptr, q_ptr, sc_ptr, zc_ptr, ss_ptr, sz_ptr, zs_ptr, zz_ptr, N, K, WORDS, G, UNIT,
                         BITS: tl.constexpr, GROUP: tl.constexpr, STAT_GROUP: tl.constexpr,
                         BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """The base weight tile by tile, bit-identical to the reference (from whole-word code blocks when GROUP % 16
    == 0: 3 word loads per 32 codes instead of one or two per code); ``_spqr_outlier_store_kernel`` then
    overwrites the outlier positions."""
    st_ptrs = (sc_ptr, zc_ptr, ss_ptr, sz_ptr, zs_ptr, zz_ptr)
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    k0 = tl.program_id(1) * BLOCK_K
    if GROUP % 16 == 0:
        w = _spqr_word_tile(q_ptr, st_ptrs, rn, k0, N, WORDS, G, UNIT, BITS, GROUP, STAT_GROUP, BLOCK_K, True)
    else:
        w = _spqr_block(q_ptr, st_ptrs, rn, k0, N, K, WORDS, G, BITS, GROUP, STAT_GROUP, BLOCK_K)
    store_tile(w_ptr, w, rn, k0 + tl.arange(0, BLOCK_K), N, K)


@triton.jit
def _spqr_outlier_store_kernel(w_ptr, rp_ptr, oc_ptr, ov_ptr, N, K, BLOCK_N: tl.constexpr, SLOTS: tl.constexpr):
    """W[n, col] = value for every CSR outlier of BLOCK_N rows, SLOTS slots per step (independent loads)."""
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    start = tl.load(rp_ptr + rn, mask=rn < N, other=0)
    count = tl.load(rp_ptr + rn + 1, mask=rn < N, other=0) - start
    for s0 in range(0, tl.max(count, axis=0), SLOTS):
        s = s0 + tl.arange(0, SLOTS)
        live = s[None, :] < count[:, None]
        col = tl.load(oc_ptr + start[:, None] + s[None, :], mask=live, other=0).to(tl.int32)
        val = tl.load(ov_ptr + start[:, None] + s[None, :], mask=live, other=0.0)
        tl.store(w_ptr + rn[:, None] * K + col, val.to(w_ptr.dtype.element_ty), mask=live)


KERNELS = KernelPair("spqr", _spqr_gemv_kernel, _spqr_gemm_kernel, _spqr_dequant_kernel, cols_per_acc=32,
                     split_k={1: 16})  # 2-4 token accumulators hold one entry per 32-code block


def code_bits(packed: dict, in_features: int) -> int:
    """The code width, read from the word count when that is unambiguous (no device sync: CUDA-graph safe)."""
    words = packed["qweight"].shape[1]
    fits = [b for b in range(1, 9) if -(-in_features * b // 32) == words]
    if len(fits) == 1:
        return fits[0]
    if not fits:
        raise UserInputError(f"spqr kernel: qweight has {words} words per row, no code width fits {in_features} "
                             "columns; pass the layer's own input")
    return int(packed["bits"][0])


def _checked(packed: dict, device: torch.device, k: int) -> dict:
    """Launch constants of a well-formed spqr packed weight on ``device`` for K = ``k`` input features."""
    specs = {"qweight": (torch.int32,), **{s: (torch.uint8,) for s in _STATS[:2]}, **{s: FLOATS for s in _STATS[2:]},
             "outlier_row_ptr": (torch.int32,), "outlier_col": (torch.int16,), "outlier_val": FLOATS}
    check_packed(packed, specs, device, "spqr")
    n, g = packed["scale_codes"].shape
    if g == 0 or k % g:
        raise UserInputError(f"spqr kernel: {g} statistic groups do not divide {k} input features; pass the "
                             "layer's own input")
    stat_group = -(-n // packed["scale_scale"].shape[0])  # rows per second-level block, as formats.spqr.first_level
    expect_shape(packed["zero_codes"], (n, g), "zero_codes", "spqr")
    for name in _STATS[2:]:
        expect_shape(packed[name], (-(-n // stat_group), g), name, "spqr")
    expect_shape(packed["outlier_row_ptr"], (n + 1,), "outlier_row_ptr", "spqr")
    return {"BITS": code_bits(packed, k), "GROUP": k // g, "STAT_GROUP": stat_group}


def _base(packed: dict) -> tuple:
    return (packed["qweight"], *(packed[s] for s in _STATS))


def _outliers(packed: dict) -> tuple:
    return packed["outlier_row_ptr"], packed["outlier_col"], packed["outlier_val"]


def spqr_dequantize(packed: dict, dtype: torch.dtype, in_features: int) -> Tensor:
    """The dense weight ``[N, in_features]`` in ``dtype``, outliers included (``formats.spqr.unpack`` in ``dtype``)."""
    q = packed["qweight"]
    consts = _checked(packed, q.device, in_features)
    n, g = packed["scale_codes"].shape
    w = torch.empty(n, in_features, dtype=dtype, device=q.device)
    KERNELS.run_dequant((w, *_base(packed), n, in_features, q.shape[1], g, UNIT), n, in_features, consts)
    block, slots = (8, 4) if KERNELS.interpret else (64, 32)
    _spqr_outlier_store_kernel[(cdiv(n, block),)](w, *_outliers(packed), n, in_features, BLOCK_N=block,
                                                         SLOTS=slots)
    return w


def spqr_matmul(x: Tensor, packed: dict, *, out: Tensor | None = None, regime: str | None = None) -> Tensor:
    """``x @ W.T`` for an ``spqr`` packed weight (base codes + outliers); x ``[..., K]`` → ``[..., N]``.

    ``regime``: None follows kernels/select.py; "gemv", "gemm" or "dense" force one. ``out``: optional output.
    """
    return KERNELS.matmul(x, prepare(packed, x.device, x.shape[-1]), out, regime)


def prepare(packed: dict, device: torch.device, k: int) -> Call:
    """The checked launch for ``k`` input features on ``device`` (K is not stored: the caller's input width, checked
    against the packed shapes), built once per ``PackedLinear`` (see ``int4.prepare``)."""
    consts = _checked(packed, device, k)
    n, g = packed["scale_codes"].shape
    return Call((*_base(packed), *_outliers(packed)), n, k, consts, lambda dtype: spqr_dequantize(packed, dtype, k),
                extra=(packed["qweight"].shape[1], g, UNIT, *split_k_buffers(device)))  # UNIT: _spqr_words
