"""Triton kernels for ``group_sparse_int4`` (GQSA: group quantization + group sparsity, Zeng et al. 2024,
arXiv:2412.17560): every row keeps the same number KG of g-column groups, stored as int4 codes.

Layout (docs/FORMATS.md): ``group_idx: [N, KG] int16`` kept groups, ascending; ``qweight: [N, KG*g/2] uint8`` the
nibble-packed codes of the kept groups in ``group_idx`` order; ``scales: [N, KG]`` fp16/bf16; ``zeros: [N, KG] uint8``.
Worked example (g = 4, 3 groups, keep 1): group_idx row [2] with codes [1, 2, 3, 4] → qweight row [0x21, 0x43]
covering columns 8..11.

Decode streams only the kept groups (the byte ratio is the speed limit). With g % 8 == 0 it reads the codes as 32-bit
words like int4's decode (bit-op conversion; one token folds the statistics into per-word sums, 2-4 tokens subtract
the zero point from each code once and share it) and loads each word's 8 activations with one vector load (x is
small and stays in L1/L2); other groups gather x per code. Prefill walks
the dense groups in order with one cursor per row into ``group_idx`` (a merge of sorted lists): at dense group G a
row contributes its next kept group if that is G, else zeros, so every tl.dot tile shares its K columns across rows.
Packed bytes of dropped groups are never read.

Deviation: the paper's kernel is a GEMV in CUDA; the prefill walk is ours. It spends tensor-core FLOPs on dropped
groups, so at large batch it is no faster than dense (kernels/select.py falls back), and it needs g >= 16 (tl.dot's
minimum K); smaller groups use the decode kernel over batch blocks.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from llmprune.errors import UserInputError
from llmprune.formats.group_sparse_int4 import matmul_ref as reference  # noqa: F401  (the tests' oracle)

from ._codes import (
    UNIT, code_float, column_phases, offset_zero, unit_codes, unit_dot, word_dot, word_stats, word_units,
)
from ._configs import launched
from ._launch import (  # noqa: F401 (supports: dispatch hook)
    Call, check_packed, dense_buffer, expect_shape, KernelPair, row_slice, split_k_buffers, supports,
)
from ._tiles import (
    dot_acc, expand_groups, grouped_pid, load_rows, load_x, matvec_finish, matvec_init, nibbles, per_column,
    per_group, split_k_range, split_k_store, store_out, store_token_sums,
)

FLOATS = (torch.float16, torch.bfloat16, torch.float32)


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
                                   KG, UNIT, ws_ptr, tk_ptr, M_BUCKET, GROUP: tl.constexpr, DOT_F32: tl.constexpr,
                                   BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                                   SPLIT_K: tl.constexpr = 1):
    """Decode: BLOCK_N rows per program walk their KG*g kept codes; x is gathered at each code's column. One token
    may split the kept codes among SPLIT_K programs (``split_k_store``)."""
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rb = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    if GROUP % 8 == 0:  # the code-word path: one FFMA per code and token, no int-to-float conversion
        W: tl.constexpr = BLOCK_K // 8
        b0 = tl.program_id(1) * BLOCK_B
        if BLOCK_B == 1:
            i_lo, i_hi = split_k_range(KG * GROUP, BLOCK_K, SPLIT_K)
            acc1 = tl.zeros((1, BLOCK_N, W), tl.float32)
            for i0 in range(i_lo, i_hi, BLOCK_K):  # scale and zero point folded into per-word sums (``word_stats``)
                words, first, live = _group_sparse_int4_word_slots(gi_ptr, q_ptr, rn, i0, N, KG, GROUP, BLOCK_K)
                slope, offset = word_stats(s_ptr, z_ptr, rn, i0 // 8, KG, N, GROUP, W)
                p, xsum = word_dot(words[None, :, :], _group_sparse_int4_word_x(x_ptr, b0, first, live, M, stride_xm),
                                   UNIT)
                acc1 = (acc1 + p * slope[None, :, :]) - offset[None, :, :] * xsum  # two FFMAs
            part = tl.reshape(tl.sum(acc1, axis=2), (BLOCK_N,))
            split_k_store(out_ptr, ws_ptr, tk_ptr, part, b0, rn, M, N, stride_om, SPLIT_K)
            return
        c0 = tl.zeros((1, BLOCK_N, W), tl.float32)  # 2-4 tokens: one accumulator per token
        c1 = tl.zeros((1, BLOCK_N, W), tl.float32)
        c2 = tl.zeros((1, BLOCK_N, W), tl.float32)
        c3 = tl.zeros((1, BLOCK_N, W), tl.float32)
        for i0 in range(0, KG * GROUP, BLOCK_K):  # codes minus unit zeros once for all tokens (``word_units``)
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
        return
    acc = matvec_init(BLOCK_B, BLOCK_N, BLOCK_K)
    for i0 in range(0, KG * GROUP, BLOCK_K):
        w, col, mask = _group_sparse_int4_kept(gi_ptr, q_ptr, s_ptr, z_ptr, rn, i0, N, KG, GROUP, BLOCK_K)
        if BLOCK_B == 1:  # one token: x gathered as [BLOCK_N, BLOCK_K], reduced after the loop
            row = tl.program_id(1)  # BLOCK_B = 1: the program's one token (the grid has exactly M of them)
            x = tl.load(x_ptr + row * stride_xm + col, mask=mask, other=0.0)
            acc += x.to(tl.float32) * w
        else:  # matvec_init's [BLOCK_B, BLOCK_N, BLOCK_K] partials, reduced once after the loop
            xmask = (rb[:, None, None] < M) & mask[None, :, :]
            x = tl.load(x_ptr + rb[:, None, None] * stride_xm + col[None, :, :], mask=xmask, other=0.0)
            acc += x.to(tl.float32) * w[None, :, :]
    store_out(out_ptr, matvec_finish(acc, BLOCK_B), rb, rn, M, N, stride_om)


@triton.jit
def _group_sparse_int4_dequant_kernel(w_ptr, gi_ptr, q_ptr, s_ptr, z_ptr, N, K, KG, GROUP: tl.constexpr,
                                      BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Scatter the kept groups into a zero-filled dense ``[N, K]`` buffer (the large-batch ``dense`` regime)."""
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    i0 = tl.program_id(1) * BLOCK_K
    w, col, mask = _group_sparse_int4_kept(gi_ptr, q_ptr, s_ptr, z_ptr, rn, i0, N, KG, GROUP, BLOCK_K)
    tl.store(w_ptr + rn[:, None] * K + col, w.to(w_ptr.dtype.element_ty), mask=mask)


@launched
def _group_sparse_int4_gemm_kernel(x_ptr, gi_ptr, q_ptr, s_ptr, z_ptr, out_ptr, M, N, K, stride_xm, stride_om,
                                   KG, UNIT, ws_ptr, tk_ptr, M_BUCKET, GROUP: tl.constexpr, DOT_F32: tl.constexpr,
                                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Prefill: walk dense groups G = 0..K/g-1; each row's cursor t advances when its next kept group is G."""
    pid_m, pid_n = grouped_pid(M, N, BLOCK_M, BLOCK_N, 8)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, GROUP)
    n_ok = rn < N
    t = tl.zeros((BLOCK_N,), tl.int32)
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for G in range(0, K // GROUP):
        live = n_ok & (t < KG)
        nxt = tl.load(gi_ptr + rn * KG + t, mask=live, other=-1).to(tl.int32)
        hit = live & (nxt == G)
        pos = t[None, :] * GROUP + rk[:, None]
        byte = tl.load(q_ptr + rn[None, :] * (KG * GROUP // 2) + pos // 2, mask=hit[None, :], other=0).to(tl.int32)
        code = (byte >> ((pos % 2) * 4)) & 0xF
        scale = tl.load(s_ptr + rn * KG + t, mask=hit, other=0.0).to(tl.float32)
        zero = tl.load(z_ptr + rn * KG + t, mask=hit, other=0).to(tl.float32)
        w_t = tl.where(hit[None, :], (code.to(tl.float32) - zero[None, :]) * scale[None, :], 0.0)
        acc = dot_acc(load_x(x_ptr, rm, G * GROUP + rk, M, K, stride_xm), w_t, acc, DOT_F32)
        t += hit.to(tl.int32)
    store_out(out_ptr, acc, rm, rn, M, N, stride_om)


KERNELS = KernelPair("group_sparse_int4", _group_sparse_int4_gemv_kernel, _group_sparse_int4_gemm_kernel,
                     _group_sparse_int4_dequant_kernel, cols_per_acc=8, split_k={1: 8}, dot_decode=False)


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
    w = dense_buffer(out, n, in_features, dtype, gi.device).zero_()
    KERNELS.run_dequant((w, *_tensors(packed), n, in_features, kg), n, kg * group, {"GROUP": group})
    return w


def group_sparse_int4_matmul(x: Tensor, packed: dict, *, out: Tensor | None = None,
                             regime: str | None = None) -> Tensor:
    """``x @ W.T`` for a ``group_sparse_int4`` packed weight; x ``[..., K]`` fp16/bf16 → ``[..., N]``.

    K is x's last dimension (the packed tensors hold only kept groups). ``regime``: None follows kernels/select.py;
    "gemv", "gemm" or "dense" force one. The GEMM kernel needs g >= 16 and a power of two (tl.dot tiles); other
    groups run the GEMV kernel over batch blocks instead.
    """
    k = x.shape[-1]
    n, kg, group = _checked(packed, x.device, k)
    extra = (kg, UNIT, *split_k_buffers(x.device))  # the GEMM launch appends M_BUCKET
    call = Call(_tensors(packed), n, k, {"GROUP": group}, lambda dtype: group_sparse_int4_dequantize(packed, dtype, k),
                extra=extra, gemm_ok=group >= 16 and group & (group - 1) == 0,
                dequantize_rows=lambda r0, r1, buf: group_sparse_int4_dequantize(
                    row_slice(packed, NAMES, r0, r1), buf.dtype, k, buf))
    return KERNELS.matmul(x, call, out, regime)
