"""SpQR's whole-word decode path (kernels/spqr.py, g1 % 16 == 0): a row's 32-code block is BITS whole 32-bit words,
so every code sits at a constant bit offset and becomes a float by shifts and bit operations (no per-code loads or
int-to-float conversions); the bilevel statistics are rebuilt once per group (``_spqr_scale_zero``, shared with the
code-by-code path) and folded per 16-column half. ``_spqr_word_block``/``_spqr_word_dot`` serve 1-4 token decode,
``_spqr_word_tile`` the tl.dot tiles of 5-16 tokens and prefill.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ._codes import column_phases
from ._tiles import expand_groups, per_group, row_live


@triton.jit
def _spqr_scale_zero(st_ptrs, rn, ok, c0, G, GROUP: tl.constexpr, STAT_GROUP: tl.constexpr, BLOCK: tl.constexpr):
    """First-level scale and zero point (float32, ``per_group``'s compact form) of the groups that units
    c0 .. c0+BLOCK of rows ``rn`` touch (GROUP units a group: columns, or 16-column halves for the word paths),
    rebuilt from the second level of row block rn // STAT_GROUP once per group, not per column."""
    sc_ptr, zc_ptr, ss_ptr, sz_ptr, zs_ptr, zz_ptr = st_ptrs
    blk = rn // STAT_GROUP
    scale = (per_group(sc_ptr, rn, ok, c0, G, 0, GROUP, BLOCK).to(tl.float32)
             - per_group(sz_ptr, blk, ok, c0, G, 0.0, GROUP, BLOCK).to(tl.float32)) \
        * per_group(ss_ptr, blk, ok, c0, G, 0.0, GROUP, BLOCK).to(tl.float32)
    zero = (per_group(zc_ptr, rn, ok, c0, G, 0, GROUP, BLOCK).to(tl.float32)
            - per_group(zz_ptr, blk, ok, c0, G, 0.0, GROUP, BLOCK).to(tl.float32)) \
        * per_group(zs_ptr, blk, ok, c0, G, 0.0, GROUP, BLOCK).to(tl.float32)
    return scale, zero


@triton.jit
def _spqr_word(q_ptr, rn, blk, N, WORDS, I: tl.constexpr, BITS: tl.constexpr, ROWS_FIRST: tl.constexpr):
    """Word I of the BITS 32-bit words that hold 32-code blocks ``blk`` of rows ``rn`` (uint32, [T, BLOCK_N], or
    [BLOCK_N, T] if ROWS_FIRST; a row's stream starts on a word, so block b is words b*BITS .. b*BITS+BITS-1).
    Zeros for I >= BITS (never read)."""
    if ROWS_FIRST:
        word = blk[None, :] * BITS + I
        addr = q_ptr + rn[:, None] * WORDS + word
        live = (rn[:, None] < N) & (word < WORDS)
    else:
        word = blk[:, None] * BITS + I
        addr = q_ptr + rn[None, :] * WORDS + word
        live = (rn[None, :] < N) & (word < WORDS)
    if I < BITS:
        return tl.load(addr, mask=live, other=0).to(tl.uint32, bitcast=True)
    else:
        return tl.zeros(addr.shape, tl.uint32)


@triton.jit
def _spqr_unit(words, J: tl.constexpr, BITS: tl.constexpr, unit):
    """Code J of each 32-code block as float32 1 + q / 2**BITS: its bits (straddling two words for a few J) shifted
    into the top of the mantissa of 1.0 — shifts and bit operations with constant amounts, no int-to-float
    conversion (``_codes.code_unit`` for int4)."""
    B0: tl.constexpr = J * BITS
    I: tl.constexpr = B0 // 32
    S: tl.constexpr = B0 % 32
    if S + BITS <= 32:
        bits = words[I] >> S
    else:
        bits = (words[I] >> S) | (words[I + 1] << (32 - S))
    mant = (bits << (23 - BITS)) & (((1 << BITS) - 1) << (23 - BITS))
    return (mant | unit).to(tl.float32, bitcast=True)


@triton.jit
def _spqr_halves(v, T: tl.constexpr, ROWS_FIRST: tl.constexpr):
    """A per-half statistic [BLOCK_N, 2T] as its first and second halves of each 32-code block, shaped as
    ``_spqr_word``'s words."""
    a, b = tl.split(tl.reshape(v, (v.shape[0], T, 2)))
    if ROWS_FIRST:
        return a, b
    else:
        return tl.trans(a), tl.trans(b)


@triton.jit
def _spqr_word_block(q_ptr, st_ptrs, rn, k0, N, WORDS, G, BITS: tl.constexpr, GROUP: tl.constexpr,
                     STAT_GROUP: tl.constexpr, BLOCK_K: tl.constexpr, ROWS_FIRST: tl.constexpr = False,
                     EXACT: tl.constexpr = False):
    """The step's code words and per-half statistics, shared by the tokens (GROUP % 16 == 0): each 32-code block
    of a row is BITS whole words, so every code sits at a constant bit offset (``_spqr_unit``); the bilevel
    statistics are rebuilt once per 16-column half and folded, as int4 does (``_codes.word_stats``), into
    w = s (q - z) = slope v - offset with v = 1 + q/2**BITS, slope = 2**BITS s, offset = (2**BITS + z) s.
    All [BLOCK_K/32, BLOCK_N] (blocks by rows: a thread's rows then share their activations), or [BLOCK_N,
    BLOCK_K/32] if ROWS_FIRST (the tl.dot tile's orientation). EXACT: the statistics unfolded, (scale, zero) per
    half, for ``_spqr_w``'s bit-exact form."""
    T: tl.constexpr = BLOCK_K // 32
    blk = k0 // 32 + tl.arange(0, T)
    words = (_spqr_word(q_ptr, rn, blk, N, WORDS, 0, BITS, ROWS_FIRST),
             _spqr_word(q_ptr, rn, blk, N, WORDS, 1, BITS, ROWS_FIRST),
             _spqr_word(q_ptr, rn, blk, N, WORDS, 2, BITS, ROWS_FIRST),
             _spqr_word(q_ptr, rn, blk, N, WORDS, 3, BITS, ROWS_FIRST),
             _spqr_word(q_ptr, rn, blk, N, WORDS, 4, BITS, ROWS_FIRST),
             _spqr_word(q_ptr, rn, blk, N, WORDS, 5, BITS, ROWS_FIRST),
             _spqr_word(q_ptr, rn, blk, N, WORDS, 6, BITS, ROWS_FIRST),
             _spqr_word(q_ptr, rn, blk, N, WORDS, 7, BITS, ROWS_FIRST))
    ok = rn < N
    scale, zero = _spqr_scale_zero(st_ptrs, rn, ok, k0 // 16, G, GROUP // 16, STAT_GROUP, 2 * T)
    unit_scale: tl.constexpr = 1 << BITS
    if EXACT:  # (scale, zero) in the slots of (slope, offset)
        a, b = scale, zero
    else:
        a, b = unit_scale * scale, (unit_scale + zero) * scale
    slope = tl.broadcast_to(expand_groups(a, GROUP // 16, 2 * T), (rn.shape[0], 2 * T))
    offset = tl.broadcast_to(expand_groups(b, GROUP // 16, 2 * T), (rn.shape[0], 2 * T))
    slope_a, slope_b = _spqr_halves(slope, T, ROWS_FIRST)
    offset_a, offset_b = _spqr_halves(offset, T, ROWS_FIRST)
    return words, (slope_a, offset_a, slope_b, offset_b)


@triton.jit
def _spqr_w(words, stats, J: tl.constexpr, BITS: tl.constexpr, unit, EXACT: tl.constexpr = False):
    """Weight J of each 32-code block (``_spqr_word_block`` with ROWS_FIRST): one FFMA on the code's unit value, or,
    EXACT, (q - z) * s with q = (v - 1) * 2**BITS (exact), the reference's own rounding."""
    H: tl.constexpr = 0 if J < 16 else 2
    if EXACT:
        q = (_spqr_unit(words, J, BITS, unit) - 1.0) * (1 << BITS)
        w = (q - stats[H + 1]) * stats[H]
    else:
        w = _spqr_unit(words, J, BITS, unit) * stats[H] - stats[H + 1]
    return w


@triton.jit
def _spqr_pairs(words, stats, R: tl.constexpr, BITS: tl.constexpr, unit, EXACT: tl.constexpr):
    """Weights R and R + 16 of each block joined on a new minor axis (the join tree's first level)."""
    return tl.join(_spqr_w(words, stats, R, BITS, unit, EXACT), _spqr_w(words, stats, R + 16, BITS, unit, EXACT))


@triton.jit
def _spqr_word_tile(q_ptr, st_ptrs, rn, k0, N, WORDS, G, unit, BITS: tl.constexpr, GROUP: tl.constexpr,
                    STAT_GROUP: tl.constexpr, BLOCK_K: tl.constexpr, EXACT: tl.constexpr = False):
    """Dense base W[rn, k0 : k0+BLOCK_K] in float32 for tl.dot (GROUP % 16 == 0), from whole-word code blocks: one
    FFMA per weight instead of per-code loads and I2F (``_spqr_block``); EXACT (the dequantize kernel): bit-identical
    to the reference, a subtract and a multiply per weight. Joins interleave the 32 weights of each
    block back into column order: pairing weights 16 apart first, then 8, 4, 2, 1 makes the minor axes
    (c4, c3, c2, c1, c0) of column 32t + 16c4 + 8c3 + 4c2 + 2c1 + c0, the order a row-major reshape reads."""
    words, stats = _spqr_word_block(q_ptr, st_ptrs, rn, k0, N, WORDS, G, BITS, GROUP, STAT_GROUP, BLOCK_K, True,
                                    EXACT)
    l0 = tl.join(_spqr_pairs(words, stats, 0, BITS, unit, EXACT), _spqr_pairs(words, stats, 8, BITS, unit, EXACT))
    l1 = tl.join(_spqr_pairs(words, stats, 1, BITS, unit, EXACT), _spqr_pairs(words, stats, 9, BITS, unit, EXACT))
    l2 = tl.join(_spqr_pairs(words, stats, 2, BITS, unit, EXACT), _spqr_pairs(words, stats, 10, BITS, unit, EXACT))
    l3 = tl.join(_spqr_pairs(words, stats, 3, BITS, unit, EXACT), _spqr_pairs(words, stats, 11, BITS, unit, EXACT))
    l4 = tl.join(_spqr_pairs(words, stats, 4, BITS, unit, EXACT), _spqr_pairs(words, stats, 12, BITS, unit, EXACT))
    l5 = tl.join(_spqr_pairs(words, stats, 5, BITS, unit, EXACT), _spqr_pairs(words, stats, 13, BITS, unit, EXACT))
    l6 = tl.join(_spqr_pairs(words, stats, 6, BITS, unit, EXACT), _spqr_pairs(words, stats, 14, BITS, unit, EXACT))
    l7 = tl.join(_spqr_pairs(words, stats, 7, BITS, unit, EXACT), _spqr_pairs(words, stats, 15, BITS, unit, EXACT))
    t = tl.join(tl.join(tl.join(l0, l4), tl.join(l2, l6)), tl.join(tl.join(l1, l5), tl.join(l3, l7)))
    return tl.reshape(t, (rn.shape[0], BLOCK_K))


@triton.jit
def _spqr_word_dot(acc, x_ptr, row, k0, M, K, stride_xm, words, stats, unit, BITS: tl.constexpr,
                   BLOCK_K: tl.constexpr):
    """``acc`` [BLOCK_K/32, BLOCK_N] plus one token's partial sums (``_spqr_word_block``): x loaded once,
    contiguously, split into its 32 column phases in registers; one FFMA per code, the halves' x sums shared by
    the rows. The per-code path (``_spqr_block``) loaded each code's word(s) separately and converted it with I2F:
    ~84 instructions per weight byte on sm_90 (tests/kernels/instruction_mix.py)."""
    T: tl.constexpr = BLOCK_K // 32
    cols = k0 + tl.arange(0, BLOCK_K)
    x = tl.load(x_ptr + row * stride_xm + cols, mask=(cols < K) & row_live(cols, row, M), other=0.0).to(tl.float32)
    # x[t, c4, c3, c2, c1, c0] is column 32t + 16c4 + 8c3 + 4c2 + 2c1 + c0; phases[c % 4][c // 4] is column c
    e0, e1 = tl.split(tl.reshape(x, (T, 2, 2, 2, 2, 2)))
    e0d0, e0d1 = tl.split(e0)
    e1d0, e1d1 = tl.split(e1)
    phases = (column_phases(e0d0), column_phases(e1d0), column_phases(e0d1), column_phases(e1d1))
    pa = tl.zeros(acc.shape, tl.float32)
    pb = tl.zeros(acc.shape, tl.float32)
    xa = tl.zeros((T,), tl.float32)  # x sums of each half, in registers (a tl.sum here would shuffle every step)
    xb = tl.zeros((T,), tl.float32)
    for j in tl.static_range(32):
        if j < 16:
            pa += _spqr_unit(words, j, BITS, unit) * phases[j % 4][j // 4][:, None]
            xa += phases[j % 4][j // 4]
        else:
            pb += _spqr_unit(words, j, BITS, unit) * phases[j % 4][j // 4][:, None]
            xb += phases[j % 4][j // 4]
    acc += pa * stats[0] - stats[1] * xa[:, None]
    return acc + pb * stats[2] - stats[3] * xb[:, None]
