"""Triton building blocks shared by the packed-format kernels: decode accumulators, tl.dot wrappers, masked tile
loads and stores, split-K partial sums, grouped program order, nibble unpacking and per-group statistics.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def matvec_init(BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """The decode accumulator, reduced once after the K loop (a cross-lane reduction every K step — ``tl.sum`` in
    the loop — compiled to ~30 warp shuffles per weight byte on sm_90, tests/kernels/instruction_mix.py). One token:
    [BLOCK_N, BLOCK_K] partial products; 2-4 tokens (CUDA-core FMAs): [BLOCK_B, BLOCK_N, BLOCK_K]; 16 tokens:
    [BLOCK_B, BLOCK_N] fed by one padded tl.dot per step."""
    if BLOCK_B == 1:
        return tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
    elif BLOCK_B <= 4:
        return tl.zeros((BLOCK_B, BLOCK_N, BLOCK_K), tl.float32)
    else:
        return tl.zeros((BLOCK_B, BLOCK_N), tl.float32)


@triton.jit
def matvec_step(acc, x, w, BLOCK_B: tl.constexpr, DOT_F32: tl.constexpr):
    """``acc`` (``matvec_init``) plus x[BLOCK_B, BLOCK_K] times the weight tile w[BLOCK_N, BLOCK_K]."""
    if BLOCK_B == 1:
        return acc + w * x.to(tl.float32)
    elif BLOCK_B <= 4:
        return acc + x.to(tl.float32)[:, None, :] * w[None, :, :]
    else:
        return dot_acc(x, tl.trans(w), acc, DOT_F32)


@triton.jit
def matvec_finish(acc, BLOCK_B: tl.constexpr):
    """The [BLOCK_B, BLOCK_N] result of a ``matvec_step`` loop."""
    if BLOCK_B == 1:
        return tl.sum(acc, axis=1)[None, :]
    elif BLOCK_B <= 4:
        return tl.sum(acc, axis=2)
    else:
        return acc


@triton.jit
def weight_dot(w_f32, x, acc, DOT_F32: tl.constexpr):
    """acc [BLOCK_N, BLOCK_B] + w @ x.T, the dequantized weight tile (float32, rounded to x's dtype as tensor-core
    kernels do) as tl.dot's left operand: sm_90 then issues wgmma with 64-row weight tiles, the padded token block
    as N (fewer instructions per weight byte than x @ w.T, tests/kernels/instruction_mix.py)."""
    if DOT_F32:
        return tl.dot(w_f32, tl.trans(x.to(tl.float32)), acc, input_precision="ieee")
    else:
        return tl.dot(w_f32.to(x.dtype), tl.trans(x), acc)


@triton.jit
def dot_acc(a, b_f32, acc, DOT_F32: tl.constexpr):
    """acc + a @ b with b (the dequantized weight tile, float32) rounded to a's dtype as tensor-core kernels do."""
    if DOT_F32:
        return tl.dot(a.to(tl.float32), b_f32, acc, input_precision="ieee")
    else:
        return tl.dot(a, b_f32.to(a.dtype), acc)


@triton.jit
def load_x(x_ptr, rows, cols, M, K, stride_xm):
    """The activation tile x[rows, cols], zero outside [M, K]."""
    mask = (rows[:, None] < M) & (cols[None, :] < K)
    return tl.load(x_ptr + rows[:, None] * stride_xm + cols[None, :], mask=mask, other=0.0)


@triton.jit
def store_row(out_ptr, y, row, cols, M, N, stride_om):
    """out[row, cols] = y (one token's outputs), masked to [M, N]."""
    tl.store(out_ptr + row * stride_om + cols, y.to(out_ptr.dtype.element_ty), mask=(cols < N) & row_live(cols, row, M))


@triton.jit
def row_live(cols, row, M):
    """``row < M`` as a block shaped like ``cols`` (Triton's interpreter rejects a scalar and a block in one mask;
    the compiler folds ``cols * 0``)."""
    return (cols * 0 + row) < M


@triton.jit
def split_k_range(K, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr):
    """[k_lo, k_hi) of K for split program_id(2): whole BLOCK_K steps, as even as possible (later splits may be
    empty when K has fewer steps than splits). The launch decides how many splits run (grid dim 2,
    ``KernelPair.splits``): fewer than SPLIT_K when the workspace cannot hold the partials."""
    splits = tl.num_programs(2)
    per = tl.cdiv(tl.cdiv(K, BLOCK_K), splits) * BLOCK_K
    k_lo = tl.program_id(2) * per
    return k_lo, tl.minimum(K, k_lo + per)


@triton.jit
def split_k_store(out_ptr, ws_ptr, tk_ptr, part, row, rn, M, N, stride_om, SPLIT_K: tl.constexpr):
    """``split_k_store_tile`` for one token's outputs ``part`` [BLOCK_N]."""
    split_k_store_tile(out_ptr, ws_ptr, tk_ptr, part[None, :], row + tl.arange(0, 1), rn, M, N, stride_om, SPLIT_K)


@triton.jit
def store_token_sums(out_ptr, ws_ptr, tk_ptr, y0, y1, y2, y3, row, rn, M, N, stride_om, BLOCK_B: tl.constexpr,
                     SPLIT_K: tl.constexpr):
    """Outputs [BLOCK_N] of tokens row .. row+BLOCK_B-1 (BLOCK_B in 1, 2, 4) from the 2-4 token decode paths that keep
    one accumulator per token; one token may have split K (``split_k_store``). Unused sums compile away."""
    if BLOCK_B == 1:
        split_k_store(out_ptr, ws_ptr, tk_ptr, y0, row, rn, M, N, stride_om, SPLIT_K)
    else:
        store_row(out_ptr, y0, row, rn, M, N, stride_om)
        store_row(out_ptr, y1, row + 1, rn, M, N, stride_om)
    if BLOCK_B == 4:
        store_row(out_ptr, y2, row + 2, rn, M, N, stride_om)
        store_row(out_ptr, y3, row + 3, rn, M, N, stride_om)


@triton.jit
def split_k_store_tile(out_ptr, ws_ptr, tk_ptr, part, rows, rn, M, N, stride_om, SPLIT_K: tl.constexpr):
    """Write outputs ``part`` [BLOCK_B, BLOCK_N] (float32) of split program_id(2). One split: straight to out.
    Otherwise each split stores its partial sums, takes a ticket from the tile's counter (acquire-release at GPU
    scope, after a block barrier so that every thread's stores precede it), and the last one sums the partials in
    split order — deterministic, one launch — writes out, and resets the counter for the next call. Partials are
    read through L2 (``.cg``): an SM's L1 may hold stale lines of a reused workspace."""
    splits = tl.num_programs(2)
    if SPLIT_K == 1:
        store_out(out_ptr, part, rows, rn, M, N, stride_om)
    elif splits == 1:
        store_out(out_ptr, part, rows, rn, M, N, stride_om)
    else:
        ok = (rows[:, None] < M) & (rn[None, :] < N)
        tl.store(ws_ptr + (tl.program_id(2) * M + rows[:, None]) * N + rn[None, :], part, mask=ok)
        tl.debug_barrier()
        tile = tl.program_id(1) * tl.num_programs(0) + tl.program_id(0)
        if tl.atomic_add(tk_ptr + tile, 1, sem="acq_rel", scope="gpu") == splits - 1:
            total = tl.zeros(part.shape, tl.float32)
            for s in range(splits):
                total += tl.load(ws_ptr + (s * M + rows[:, None]) * N + rn[None, :], mask=ok, other=0.0,
                                 cache_modifier=".cg")
            store_out(out_ptr, total, rows, rn, M, N, stride_om)
            tl.atomic_xchg(tk_ptr + tile, 0, sem="relaxed", scope="gpu")


@triton.jit
def store_out(out_ptr, acc, rows, cols, M, N, stride_om):
    mask = (rows[:, None] < M) & (cols[None, :] < N)
    tl.store(out_ptr + rows[:, None] * stride_om + cols[None, :], acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def grouped_pid(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """Program id → (tile row, tile col) in GROUP_M-row bands so neighbouring programs share weight tiles in L2
    (Triton matmul tutorial, "L2 cache optimizations")."""
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    per_band = GROUP_M * num_n
    band = pid // per_band
    first_m = band * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_band) % size_m
    pid_n = (pid % per_band) // size_m
    return pid_m, pid_n


@triton.jit
def store_tile(w_ptr, w, rn, rk, N, K):
    """W[rn, rk] = w for the dequantize kernels (dense row-major [N, K] output)."""
    mask = (rn[:, None] < N) & (rk[None, :] < K)
    tl.store(w_ptr + rn[:, None] * K + rk[None, :], w.to(w_ptr.dtype.element_ty), mask=mask)


@triton.jit
def nibbles(byte):
    """Bytes [A, B] (int32) → 4-bit codes [A, 2B], low nibble first (docs/FORMATS.md). Bytes are loaded once,
    contiguously, and split in registers by a broadcast shift + reshape."""
    shifts = tl.arange(0, 2) * 4
    return tl.reshape((byte[:, :, None] >> shifts[None, None, :]) & 0xF, (byte.shape[0], 2 * byte.shape[1]))


@triton.jit
def aligned(n, ALIGN: tl.constexpr):
    """``n``, a multiple of ALIGN (the launcher's guarantee), written (n // ALIGN) * ALIGN so that the compiler knows
    it: Triton specializes int arguments only for multiples of 16, and a row stride it cannot prove a multiple of 8
    turns the per-row vector loads at ``row * n`` into one load per element."""
    if ALIGN > 1:
        n = (n // ALIGN) * ALIGN
    return n


@triton.jit
def per_group(ptr, rows, ok, k0, NG, other, GROUP: tl.constexpr, BLOCK_K: tl.constexpr):
    """Per-group values ``ptr[rows, g]`` (row stride NG, g = column // GROUP) for the groups that columns
    k0 .. k0+BLOCK_K touch, in compact form for ``expand_groups``: [BLOCK_N, 1] when the tile sits in one group,
    [BLOCK_N, BLOCK_K/GROUP] when it spans several, [BLOCK_N, BLOCK_K] (one per column) when GROUP is not a power of
    two. Arithmetic on the compact form (SpQR's second level) costs one op per group instead of per column."""
    if (GROUP & (GROUP - 1)) != 0:
        g = (k0 + tl.arange(0, BLOCK_K)) // GROUP
        return tl.load(ptr + rows[:, None] * NG + g[None, :], mask=ok[:, None] & (g[None, :] < NG), other=other)
    elif GROUP >= BLOCK_K:
        return tl.load(ptr + rows * NG + k0 // GROUP, mask=ok, other=other)[:, None]  # callers keep k0 < K
    else:
        g = k0 // GROUP + tl.arange(0, BLOCK_K // GROUP)
        return tl.load(ptr + rows[:, None] * NG + g[None, :], mask=ok[:, None] & (g[None, :] < NG), other=other)


@triton.jit
def expand_groups(v, GROUP: tl.constexpr, BLOCK_K: tl.constexpr):
    """``per_group``'s compact values, broadcastable to [BLOCK_N, BLOCK_K] (a register broadcast, no loads)."""
    if (GROUP & (GROUP - 1)) == 0 and GROUP < BLOCK_K:
        v = tl.broadcast_to(v[:, :, None], (v.shape[0], BLOCK_K // GROUP, GROUP))
        return tl.reshape(v, (v.shape[0], BLOCK_K))
    else:
        return v


@triton.jit
def per_column(ptr, rows, ok, k0, NG, other, GROUP: tl.constexpr, BLOCK_K: tl.constexpr):
    """Per-group values for columns k0 .. k0+BLOCK_K of ``rows``, broadcastable to [BLOCK_N, BLOCK_K]: one load per
    row when the tile sits in one group, one per group and a register broadcast when it spans several, one per
    column when GROUP is not a power of two."""
    return expand_groups(per_group(ptr, rows, ok, k0, NG, other, GROUP, BLOCK_K), GROUP, BLOCK_K)


@triton.jit
def two_four_expand(c0, c1, nib, fill):
    """Kept values (c0, c1) of each group of 4 [A, G] at positions (nib & 3, nib >> 2) → dense [A, 4G], ``fill``
    at the two pruned positions."""
    pos = tl.arange(0, 4)[None, None, :]
    dense = tl.where(pos == (nib & 3)[:, :, None], c0[:, :, None],
                     tl.where(pos == (nib >> 2)[:, :, None], c1[:, :, None], fill))
    return tl.reshape(dense, (c0.shape[0], 4 * c0.shape[1]))


@triton.jit
def load_rows(ptr, rn, N, start, width, row_len, other, COLS: tl.constexpr):
    """ptr[rn, start .. start+COLS] of a row-major [N, row_len] tensor, masked to ``width`` valid columns."""
    cols = start + tl.arange(0, COLS)
    mask = (rn[:, None] < N) & (cols[None, :] < width)
    return tl.load(ptr + rn[:, None] * row_len + cols[None, :], mask=mask, other=other)
