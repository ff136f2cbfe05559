"""Triton kernels for ``int4``: dense group-quantized 4-bit weights, the non-sparse baseline.

Layout (docs/FORMATS.md): ``qweight: [N, K/2] uint8`` nibble-packed codes (low nibble = even column),
``scales: [N, K/g]`` fp16/bf16, ``zeros: [N, K/g] uint8``; W[n, k] = (code - zero) * scale with the group
k // g. Worked example: byte 0x21 at qweight[n, 0] holds codes 1 (column 0) and 2 (column 1).

All kernels read only these packed bytes and rebuild weights in registers (Frantar et al., "Marlin",
arXiv:2408.11743, and GPTQ's Triton kernel do the same). Decode (1-4 tokens) reads the codes as 32-bit words (8
columns) and turns each nibble into the float 1 + q/16 with a shift and one bit operation (``code_unit``), folding
scale and zero point into per-word sums (``word_stats``): one FMA per weight and token, no int-to-float
conversion. One token may also split K among SPLIT_K programs (autotuned 1-8; ``split_k_store``: the last program
of a tile sums the partials in a fixed order, one launch): tiles that stream 64 B of codes per thread per step issue
~9 instructions per byte instead of ~12-13 but are too few programs for N = 4096 without it. 5-16 tokens build
the tile from the same code words for one tl.dot per step, the weight as the left operand, and split K the same way;
the prefill GEMM uses the same tiles. With fp16 activations and scales the tile is dequantized in half precision,
two codes per bit operation and two weights per HADD2/HMUL2 (``_int4_half_tile``, x permuted in registers to the
tile's pair order; wgmma decode tiles and mma.sync prefill tiles, where it measures fewer instructions), otherwise in
float32 (``_int4_word_tile``, one FFMA per weight): the first gives the reference's weights rounded once to fp16,
the second the same to within 2**-19 of the scale before its rounding. The dequantize kernel (``dense`` regime)
and groups not a multiple of 8 split bytes into nibbles with the 2**23 bit trick (``code_float``), bit-identical to
the reference.

Deviation: Marlin reorders the codes offline so each thread's 128-bit load feeds its MMA fragment directly; our
layout is the plain row-major contract shared with the torch reference and Triton exposes no register layouts or
packed-half bit casts (the fp16 pairs are rebuilt from int16 halves, which costs PRMTs), so the loops still issue
~8.5-12 instructions per weight byte on sm_90 (tests/kernels/instruction_mix.py; ~9 is the memory-bound limit).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from llmprune.errors import UserInputError
from llmprune.formats.int4 import matmul_ref as reference  # noqa: F401  (the oracle the tests compare against)

from ._codes import (
    UNIT, code_float, column_phases, half_order, half_tile, offset_zero, word_dot, word_stats, word_tile,
)
from ._configs import launched
from ._launch import (  # noqa: F401 (supports: dispatch hook)
    FLOATS, Call, check_packed, dense_buffer, expect_shape, KernelPair, row_slice, split_k_buffers, supports,
    word_aligned,
)
from ._tiles import (
    dot_acc, expand_groups, grouped_pid, load_rows, load_x, matvec_finish, matvec_init, matvec_step, nibbles,
    per_column, per_group, split_k_range, split_k_store, split_k_store_tile, store_out, store_tile, weight_dot,
)

NAMES = ("qweight", "scales", "zeros")


@triton.jit
def _int4_tile(q_ptr, s_ptr, z_ptr, rn, k0, N, K, GROUP: tl.constexpr, BLOCK_K: tl.constexpr):
    """Dequantized W[rn, k0 : k0+BLOCK_K] in float32: BLOCK_K/2 bytes per row loaded contiguously, split in
    registers."""
    byte = load_rows(q_ptr, rn, N, k0 // 2, K // 2, K // 2, 0, BLOCK_K // 2).to(tl.int32)
    ok = rn < N
    scale = per_column(s_ptr, rn, ok, k0, K // GROUP, 0.0, GROUP, BLOCK_K).to(tl.float32)
    zero = expand_groups(offset_zero(per_group(z_ptr, rn, ok, k0, K // GROUP, 0, GROUP, BLOCK_K)), GROUP, BLOCK_K)
    return (code_float(nibbles(byte)) - zero) * scale


@triton.jit
def _int4_word_tile(q_ptr, s_ptr, z_ptr, rn, k0, N, K, unit, GROUP: tl.constexpr, BLOCK_K: tl.constexpr):
    """Dequantized W[rn, k0 : k0+BLOCK_K] in float32 from 32-bit code words (GROUP % 8 == 0, ``word_tile``), for
    tl.dot. Against ``_int4_tile`` (bytes split into nibbles, code_float, subtract, multiply) the 16-token loop
    issues ~13 instead of ~20 instructions per byte on sm_90, and its tile reaches shared memory in 128-bit stores
    instead of 16-bit ones (tests/kernels/instruction_mix.py)."""
    W: tl.constexpr = BLOCK_K // 8
    words = load_rows(q_ptr.to(tl.pointer_type(tl.int32)), rn, N, k0 // 8, K // 8, K // 8, 0, W)
    slope, offset = word_stats(s_ptr, z_ptr, rn, k0 // 8, K // GROUP, N, GROUP, W)
    return word_tile(words, slope, offset, unit, BLOCK_K)


@triton.jit
def _int4_half_tile(q_ptr, s_ptr, z_ptr, rn, k0, N, K, unit, GROUP: tl.constexpr, BLOCK_K: tl.constexpr):
    """Dequantized W[rn, k0 : k0+BLOCK_K] in fp16, columns in ``half_order`` (fp16 x and scales, GROUP % 8 == 0;
    ``half_tile``): ~8.5 instead of ~12.4 loop instructions per weight byte at 16 tokens on sm_90
    (tests/kernels/instruction_mix.py)."""
    W: tl.constexpr = BLOCK_K // 8
    words = load_rows(q_ptr.to(tl.pointer_type(tl.int32)), rn, N, k0 // 8, K // 8, K // 8, 0, W)
    return half_tile(words, s_ptr, z_ptr, rn, k0 // 8, K // GROUP, N, unit, GROUP, W)


@triton.jit
def _int4_one_token(acc, x_ptr, q_ptr, s_ptr, z_ptr, rn, row, k0, N, K, stride_xm, unit, GROUP: tl.constexpr,
                    BLOCK_K: tl.constexpr):
    """``acc`` plus the partial sums [BLOCK_N, BLOCK_K/8] of one token, one per 32-bit word of codes (8 columns,
    GROUP % 8 == 0): slope * sum_j v_j x_j - offset * sum_j x_j (``word_stats``), a shift, a bit operation and one
    FMA per weight, the word's x sum shared by all rows. Codes are read as int32 words straight from the uint8
    buffer; x is loaded once per K step and split into its 8 column phases in registers
    (tests/kernels/instruction_mix.py: ~25% fewer instructions per byte than splitting bytes into nibbles against
    even/odd columns, no int-to-float conversions).
    """
    W: tl.constexpr = BLOCK_K // 8
    words = load_rows(q_ptr.to(tl.pointer_type(tl.int32)), rn, N, k0 // 8, K // 8, K // 8, 0, W)
    cols = k0 + tl.arange(0, BLOCK_K)
    x = tl.load(x_ptr + row * stride_xm + cols, mask=cols < K, other=0.0).to(tl.float32)
    xs = column_phases(tl.reshape(x, (W, 2, 2, 2)))
    p, xsum = word_dot(words, (xs[0][None, :], xs[1][None, :], xs[2][None, :], xs[3][None, :],
                                xs[4][None, :], xs[5][None, :], xs[6][None, :], xs[7][None, :]), unit)
    slope, offset = word_stats(s_ptr, z_ptr, rn, k0 // 8, K // GROUP, N, GROUP, W)
    return (acc + p * slope) - offset * xsum  # two FFMAs


@triton.jit
def _int4_few_tokens(acc, x_ptr, q_ptr, s_ptr, z_ptr, rn, rb, k0, M, N, K, stride_xm, unit, GROUP: tl.constexpr,
                     BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr):
    """``_int4_one_token`` for BLOCK_B (2-4) tokens: ``acc`` plus partial sums [BLOCK_B, BLOCK_N, BLOCK_K/8]; the words
    are unpacked once and serve every token."""
    W: tl.constexpr = BLOCK_K // 8
    words = load_rows(q_ptr.to(tl.pointer_type(tl.int32)), rn, N, k0 // 8, K // 8, K // 8, 0, W)[None, :, :]
    x = load_x(x_ptr, rb, k0 + tl.arange(0, BLOCK_K), M, K, stride_xm).to(tl.float32)
    xs = column_phases(tl.reshape(x, (BLOCK_B, W, 2, 2, 2)))
    p, xsum = word_dot(words, (xs[0][:, None, :], xs[1][:, None, :], xs[2][:, None, :], xs[3][:, None, :],
                                xs[4][:, None, :], xs[5][:, None, :], xs[6][:, None, :], xs[7][:, None, :]), unit)
    slope, offset = word_stats(s_ptr, z_ptr, rn, k0 // 8, K // GROUP, N, GROUP, W)
    return (acc + p * slope[None, :, :]) - offset[None, :, :] * xsum  # two FFMAs


@launched
def _int4_gemv_kernel(x_ptr, q_ptr, s_ptr, z_ptr, out_ptr, M, N, K, stride_xm, stride_om, UNIT, ws_ptr, tk_ptr,
                      M_BUCKET, GROUP: tl.constexpr, DOT_F32: tl.constexpr, BLOCK_B: tl.constexpr,
                      BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr = 1,
                      STAGES: tl.constexpr = None):
    """Decode: one program per BLOCK_N output rows (and BLOCK_B tokens), streaming K in BLOCK_K steps; one token
    may split K among SPLIT_K programs (``split_k_store``); STAGES pipelines the 1-4 token loops (``_configs``)."""
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rb = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    if BLOCK_B * (GROUP % 8 + 1) == 1:  # one token, groups a multiple of 8 (K too): the code-word path
        k_lo, k_hi = split_k_range(K, BLOCK_K, SPLIT_K)
        acc1 = tl.zeros((BLOCK_N, BLOCK_K // 8), tl.float32)
        for k0 in tl.range(k_lo, k_hi, BLOCK_K, num_stages=STAGES):
            acc1 = _int4_one_token(acc1, x_ptr, q_ptr, s_ptr, z_ptr, rn, tl.program_id(1), k0, N, K, stride_xm, UNIT,
                                    GROUP, BLOCK_K)
        split_k_store(out_ptr, ws_ptr, tk_ptr, tl.sum(acc1, axis=1), tl.program_id(1), rn, M, N, stride_om,
                      SPLIT_K)
    elif BLOCK_B <= 4 and GROUP % 8 == 0:  # 2-4 tokens: the same code words, one accumulator per token
        acc3 = tl.zeros((BLOCK_B, BLOCK_N, BLOCK_K // 8), tl.float32)
        for k0 in tl.range(0, K, BLOCK_K, num_stages=STAGES):
            acc3 = _int4_few_tokens(acc3, x_ptr, q_ptr, s_ptr, z_ptr, rn, rb, k0, M, N, K, stride_xm, UNIT, GROUP,
                                     BLOCK_B, BLOCK_K)
        store_out(out_ptr, tl.sum(acc3, axis=2), rb, rn, M, N, stride_om)
    elif GROUP % 8 == 0:  # 5-16 tokens: code-word tiles, the weight as tl.dot's left operand, K split as for one
        k_lo, k_hi = split_k_range(K, BLOCK_K, SPLIT_K)
        acc_t = tl.zeros((BLOCK_N, BLOCK_B), tl.float32)
        FP16: tl.constexpr = (x_ptr.dtype.element_ty == tl.float16) & (s_ptr.dtype.element_ty == tl.float16)
        for k0 in range(k_lo, k_hi, BLOCK_K):
            if (BLOCK_N >= 64) & FP16:  # wgmma tiles (mma.sync ones reshuffle the fp16 pairs: more instructions)
                w = _int4_half_tile(q_ptr, s_ptr, z_ptr, rn, k0, N, K, UNIT, GROUP, BLOCK_K)
                x = half_order(load_x(x_ptr, rb, k0 + tl.arange(0, BLOCK_K), M, K, stride_xm), BLOCK_K)
            else:
                w = _int4_word_tile(q_ptr, s_ptr, z_ptr, rn, k0, N, K, UNIT, GROUP, BLOCK_K)
                x = load_x(x_ptr, rb, k0 + tl.arange(0, BLOCK_K), M, K, stride_xm)
            acc_t = weight_dot(w, x, acc_t, DOT_F32)
        split_k_store_tile(out_ptr, ws_ptr, tk_ptr, tl.trans(acc_t), rb, rn, M, N, stride_om, SPLIT_K)
    else:
        acc = matvec_init(BLOCK_B, BLOCK_N, BLOCK_K)
        for k0 in tl.range(0, K, BLOCK_K, num_stages=STAGES):
            w = _int4_tile(q_ptr, s_ptr, z_ptr, rn, k0, N, K, GROUP, BLOCK_K)
            x = load_x(x_ptr, rb, k0 + tl.arange(0, BLOCK_K), M, K, stride_xm)
            acc = matvec_step(acc, x, w, BLOCK_B, DOT_F32)
        store_out(out_ptr, matvec_finish(acc, BLOCK_B), rb, rn, M, N, stride_om)


@launched
def _int4_gemm_kernel(x_ptr, q_ptr, s_ptr, z_ptr, out_ptr, M, N, K, stride_xm, stride_om, UNIT, ws_ptr, tk_ptr,
                      M_BUCKET,
                      GROUP: tl.constexpr, DOT_F32: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Prefill: a BLOCK_M x BLOCK_N output tile; each K step dequantizes W[BLOCK_N, BLOCK_K] for tl.dot (from code
    words when GROUP % 8 == 0: 15-23 instead of 23-31 loop instructions per weight byte on sm_90)."""
    pid_m, pid_n = grouped_pid(M, N, BLOCK_M, BLOCK_N, 8)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    FP16: tl.constexpr = (x_ptr.dtype.element_ty == tl.float16) & (s_ptr.dtype.element_ty == tl.float16)
    for k0 in range(0, K, BLOCK_K):
        x = load_x(x_ptr, rm, k0 + tl.arange(0, BLOCK_K), M, K, stride_xm)
        if (GROUP % 8 == 0) & (BLOCK_M < 64) & FP16:  # mma.sync tiles (wgmma's reloaded statistics per element)
            w = _int4_half_tile(q_ptr, s_ptr, z_ptr, rn, k0, N, K, UNIT, GROUP, BLOCK_K)
            x = half_order(x, BLOCK_K)
        elif GROUP % 8 == 0:
            w = _int4_word_tile(q_ptr, s_ptr, z_ptr, rn, k0, N, K, UNIT, GROUP, BLOCK_K)
        else:
            w = _int4_tile(q_ptr, s_ptr, z_ptr, rn, k0, N, K, GROUP, BLOCK_K)
        acc = dot_acc(x, tl.trans(w), acc, DOT_F32)
    store_out(out_ptr, acc, rm, rn, M, N, stride_om)


@triton.jit
def _int4_dequant_kernel(w_ptr, q_ptr, s_ptr, z_ptr, N, K, GROUP: tl.constexpr,
                         BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """The dense weight tile by tile (for the large-batch ``dense`` regime: dequantize once, then cuBLAS)."""
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    k0 = tl.program_id(1) * BLOCK_K
    w = _int4_tile(q_ptr, s_ptr, z_ptr, rn, k0, N, K, GROUP, BLOCK_K)
    store_tile(w_ptr, w, rn, k0 + tl.arange(0, BLOCK_K), N, K)


KERNELS = KernelPair("int4", _int4_gemv_kernel, _int4_gemm_kernel, _int4_dequant_kernel, cols_per_acc=8,
                     split_k={1: 8, 16: 8})


def _checked(packed: dict, device: torch.device) -> tuple[int, int, int]:
    """(N, K, group) of a well-formed int4 packed weight on ``device``."""
    check_packed(packed, {"qweight": (torch.uint8,), "scales": FLOATS, "zeros": (torch.uint8,)}, device, "int4")
    q, s = packed["qweight"], packed["scales"]
    n, k, n_groups = q.shape[0], q.shape[1] * 2, s.shape[1]
    if n_groups == 0 or k % n_groups:
        raise UserInputError(f"int4 kernel: {n_groups} scale groups do not divide {k} columns; re-pack the layer")
    expect_shape(s, (n, n_groups), "scales", "int4")
    expect_shape(packed["zeros"], (n, n_groups), "zeros", "int4")
    return n, k, k // n_groups


def int4_dequantize(packed: dict, dtype: torch.dtype, out: Tensor | None = None) -> Tensor:
    """The dense weight ``[N, K]`` in ``dtype`` (equal to ``formats.int4.unpack`` rounded to ``dtype``), written
    into ``out`` when given (a contiguous ``[N, K]`` buffer)."""
    q = packed["qweight"]
    n, k, group = _checked(packed, q.device)
    w = dense_buffer(out, n, k, dtype, q.device)
    KERNELS.run_dequant((w, q, packed["scales"], packed["zeros"], n, k), n, k, {"GROUP": group})
    return w


def prepare(packed: dict, device: torch.device, k: int) -> Call:
    """The checked launch of an int4 packed weight on ``device``, independent of the activations, so a
    ``PackedLinear`` builds it once (llmprune/dispatch.py) rather than on every call. K is stored (``k``, the
    input features, is checked against it per call by ``flatten_input``)."""
    n, k, group = _checked(packed, device)
    q = word_aligned(packed["qweight"])
    extra = (UNIT, *split_k_buffers(device))  # UNIT: see _codes.code_unit
    return Call((q, packed["scales"], packed["zeros"]), n, k, {"GROUP": group},
                lambda dtype: int4_dequantize(packed, dtype), extra=extra,
                dequantize_rows=lambda r0, r1, buf: int4_dequantize(row_slice(packed, NAMES, r0, r1), buf.dtype, buf))


def int4_matmul(x: Tensor, packed: dict, *, out: Tensor | None = None, regime: str | None = None) -> Tensor:
    """``x @ W.T`` for an ``int4`` packed weight; x is ``[..., K]`` fp16/bf16, the result ``[..., N]`` in x's dtype.

    ``regime``: None follows kernels/select.py (gemv for few tokens, gemm, dense from 64); "gemv", "gemm" or
    "dense" force one (tests, benchmarks). ``out``: an optional preallocated output (fully overwritten).
    """
    return KERNELS.matmul(x, prepare(packed, x.device, x.shape[-1]), out, regime)
