"""4-bit codes to floats in registers without int-to-float conversions (sm_90 issues I2F at 1/8 of the FMA rate;
tests/kernels/instruction_mix.py counts them in each decode loop).

Three bit tricks, all exact: ``code_float`` ORs a code into the mantissa of 2**23 (the dequantized-tile paths
subtract ``2**23 + zero``); ``code_unit`` shifts a nibble of a 32-bit code word into the top mantissa bits of 1.0,
giving 1 + q/16, and ``word_stats`` folds scale and zero point into per-word sums so that the decode paths spend one
FMA per weight and token; ``half_pairs`` masks two nibbles at once into a pair of fp16 1024.0s, for tl.dot tiles
dequantized two weights per half-precision instruction (``half_tile``).
"""
from __future__ import annotations

import triton
import triton.language as tl

from ._tiles import expand_groups, per_group

UNIT = 0x3F800000  # the bits of 1.0f; kernels take it as a run-time argument (see ``code_unit``)


@triton.jit
def code_float(code):
    """Non-negative int32 codes (< 2**23) → float32 ``2**23 + code``: the code OR-ed into the mantissa of 2**23 and
    reinterpreted — one bit operation instead of an int-to-float conversion, which sm_90 issues at 1/8 of the FMA
    rate (tests/kernels/instruction_mix.py counts them). Callers subtract ``2**23 + zero`` (``offset_zero``); that is
    exact, both being integers below 2**24. Marlin (arXiv:2408.11743) uses the same trick with fp16's 1024."""
    return (code | 0x4B000000).to(tl.float32, bitcast=True)


@triton.jit
def offset_zero(zero):
    """Zero points (uint8, any shape) as float32 ``2**23 + zero``, to subtract from ``code_float``."""
    return zero.to(tl.float32) + 8388608.0


@triton.jit
def code_unit(words, J: tl.constexpr, unit):
    """Nibble J (columns 8w+J) of int32 code words → float32 ``1 + code/16``: the code shifted into the top four
    mantissa bits of 1.0 (a shift and one bit operation, no int-to-float conversion, no per-weight zero
    subtraction: callers fold the offset into per-word sums, see ``word_stats``). ``unit`` is ``UNIT`` passed as a
    kernel argument: a register, so ptxas fuses mask and OR into one LOP3 (with two immediates it emits two; ~12%
    fewer loop instructions, tests/kernels/instruction_mix.py)."""
    if 19 - 4 * J >= 0:
        bits = (words << (19 - 4 * J)) & 0x780000
    else:
        bits = (words >> (4 * J - 19)) & 0x780000
    return (bits | unit).to(tl.float32, bitcast=True)


@triton.jit
def column_phases(x8):
    """x8 [..., W, 2, 2, 2] (a row of 8W activations) → its 8 column phases x[..., 8w + j], j = 0..7, [..., W]
    each: split in registers, x having been loaded once, contiguously."""
    c0, c1 = tl.split(x8)  # x8[..., w, a, b, c] is column 8w + 4a + 2b + c
    b00, b01 = tl.split(c0)
    b10, b11 = tl.split(c1)
    x0, x4 = tl.split(b00)
    x2, x6 = tl.split(b01)
    x1, x5 = tl.split(b10)
    x3, x7 = tl.split(b11)
    return x0, x1, x2, x3, x4, x5, x6, x7


@triton.jit
def word_dot(words, x, unit):
    """(sum_j v_j x_j, sum_j x_j) over the 8 codes of each word (v = ``code_unit``); ``words`` and the phases ``x``
    come shaped to broadcast. One FMA chain: each step compiles to a single FFMA."""
    p = code_unit(words, 0, unit) * x[0]
    p = p + code_unit(words, 1, unit) * x[1]
    p = p + code_unit(words, 2, unit) * x[2]
    p = p + code_unit(words, 3, unit) * x[3]
    p = p + code_unit(words, 4, unit) * x[4]
    p = p + code_unit(words, 5, unit) * x[5]
    p = p + code_unit(words, 6, unit) * x[6]
    p = p + code_unit(words, 7, unit) * x[7]
    return p, ((x[0] + x[1]) + (x[2] + x[3])) + ((x[4] + x[5]) + (x[6] + x[7]))


@triton.jit
def word_scale_zero(s_ptr, z_ptr, rn, w0, NG, N, GROUP: tl.constexpr, W: tl.constexpr):
    """Scale and zero point (float32, ``per_group``'s compact form) of code words w0 .. w0+W of rows ``rn``
    (statistics [N, NG], GROUP % 8 == 0 so a word sits in one group)."""
    ok = rn < N
    scale = per_group(s_ptr, rn, ok, w0, NG, 0.0, GROUP // 8, W).to(tl.float32)
    zero = per_group(z_ptr, rn, ok, w0, NG, 0, GROUP // 8, W).to(tl.float32)
    return scale, zero


@triton.jit
def word_stats(s_ptr, z_ptr, rn, w0, NG, N, GROUP: tl.constexpr, W: tl.constexpr):
    """Slope 16 s and offset (16 + z) s of code words w0 .. w0+W of rows ``rn`` ([BLOCK_N, W] float32,
    ``word_scale_zero``). With v = 1 + q/16 (``code_unit``), s (q - z) = 16 s v - (16 + z) s, so a word contributes
    slope * sum_j v_j x_j - offset * sum_j x_j: one FMA per weight. The subtraction cancels at most ~3 bits of
    float32 (|v| < 2, z < 16)."""
    scale, zero = word_scale_zero(s_ptr, z_ptr, rn, w0, NG, N, GROUP, W)
    return slope_offset(scale, zero, GROUP, W)


@triton.jit
def slope_offset(scale, zero, GROUP: tl.constexpr, W: tl.constexpr):
    """``word_stats`` from statistics already loaded (float32, ``per_group``'s compact form)."""
    return expand_groups(16.0 * scale, GROUP // 8, W), expand_groups((16.0 + zero) * scale, GROUP // 8, W)


@triton.jit
def word_tile(words, slope, offset, unit, BLOCK_K: tl.constexpr):
    """Dequantized weights [BLOCK_N, BLOCK_K] in float32, column order, of code words [BLOCK_N, BLOCK_K/8] for
    tl.dot: each column phase is ``code_unit`` times the word's slope minus its offset (``word_stats``, one FFMA per
    weight), the eight phases interleaved back into column order by joins. Not bit-identical to the reference's
    (q - z) * s: the offset is rounded to float32 before the subtraction, an error below 2**-19 of the scale, far
    under the tile's fp16 rounding."""
    p0 = code_unit(words, 0, unit) * slope - offset
    p1 = code_unit(words, 1, unit) * slope - offset
    p2 = code_unit(words, 2, unit) * slope - offset
    p3 = code_unit(words, 3, unit) * slope - offset
    p4 = code_unit(words, 4, unit) * slope - offset
    p5 = code_unit(words, 5, unit) * slope - offset
    p6 = code_unit(words, 6, unit) * slope - offset
    p7 = code_unit(words, 7, unit) * slope - offset
    # join appends a minor axis: the first joins pair phases 4 apart, so t[n, w, c, b, a] = p[4c + 2b + a] and the
    # row-major reshape puts phase j of word w at column 8w + j
    t = tl.join(tl.join(tl.join(p0, p4), tl.join(p2, p6)), tl.join(tl.join(p1, p5), tl.join(p3, p7)))
    return tl.reshape(t, (words.shape[0], BLOCK_K))


@triton.jit
def word_units(s_ptr, z_ptr, rn, w0, NG, N, GROUP: tl.constexpr, W: tl.constexpr):
    """Slope 16 s and unit zero 1 + z/16 of code words w0 .. w0+W of rows ``rn`` (``word_stats``' layout): for paths
    whose activations differ per row (picked or gathered x), subtracting the unit zero from each ``code_unit`` once
    (exact: both are multiples of 1/16 in [1, 2)) is cheaper than ``word_stats``' per-token sum of x, and
    s (q - z) = slope * (v - (1 + z/16))."""
    scale, zero = word_scale_zero(s_ptr, z_ptr, rn, w0, NG, N, GROUP, W)
    return expand_groups(16.0 * scale, GROUP // 8, W), expand_groups(1.0 + zero * 0.0625, GROUP // 8, W)


@triton.jit
def unit_codes(words, zc, unit):
    """The 8 codes of each word as ``code_unit`` minus the unit zero ``zc`` (``word_units``): exact, computed once
    and shared by every token."""
    return (code_unit(words, 0, unit) - zc, code_unit(words, 1, unit) - zc, code_unit(words, 2, unit) - zc,
            code_unit(words, 3, unit) - zc, code_unit(words, 4, unit) - zc, code_unit(words, 5, unit) - zc,
            code_unit(words, 6, unit) - zc, code_unit(words, 7, unit) - zc)


@triton.jit
def unit_dot(acc, u, x, slope):
    """``acc`` + slope * sum_j u_j x_j over a word's 8 codes (``unit_codes``) and one token's activations at them:
    one FFMA per code and token."""
    p = u[0] * x[0] + u[1] * x[1]
    p = p + u[2] * x[2]
    p = p + u[3] * x[3]
    p = p + u[4] * x[4]
    p = p + u[5] * x[5]
    p = p + u[6] * x[6]
    p = p + u[7] * x[7]
    return acc + p * slope


HALF_MAGIC = tl.constexpr(0x5B806400)  # UNIT ^ HALF_MAGIC = 0x64006400, two fp16 1024.0s: ``half_pairs``' base


@triton.jit
def half_pairs(words, unit, COMPUTED: tl.constexpr = False):
    """The 8 codes of each 32-bit word (int32 [BLOCK_N, W]) as fp16 ``1024 + code`` in pair order,
    [BLOCK_N, W, 4, 2]: element [n, w, j, h] is nibble j + 4h (column 8w + j + 4h). One shift and one bit operation
    make two fp16 values at once: masking nibbles j and j + 4 (bits 4j and 16 + 4j after the shift) into the
    mantissas of 0x64006400 gives 1024 + q in each half of the word (exact: 1024..1039 are fp16 integers), the fp16
    form of ``code_unit``'s trick (Marlin, arXiv:2408.11743, and FasterTransformer dequantize this way). ``unit`` is
    ``UNIT`` (a register, so mask and OR fuse into one LOP3); ``half_order`` permutes x to the pair order.
    COMPUTED: the words were computed in registers (sparse24_int4's dense words), so the four shifts are joined
    rather than broadcast, which made Triton recompute the words once per nibble pair (47 vs 22 instr/B); words
    loaded from memory take the broadcast (8.5 vs 8.9 instr/B and a quarter of the shared memory)."""
    magic = unit ^ HALF_MAGIC
    if COMPUTED:
        t0 = words & 0x000F000F | magic
        t1 = (words >> 4) & 0x000F000F | magic
        t2 = (words >> 8) & 0x000F000F | magic
        t3 = (words >> 12) & 0x000F000F | magic
        t = tl.reshape(tl.join(tl.join(t0, t2), tl.join(t1, t3)), (words.shape[0], words.shape[1], 4))
    else:
        j = tl.arange(0, 4)
        t = (words[:, :, None] >> (4 * j)[None, None, :]) & 0x000F000F | magic
    return tl.join(t.to(tl.int16), (t >> 16).to(tl.int16)).to(tl.float16, bitcast=True)


@triton.jit
def half_tile(words, s_ptr, z_ptr, rn, w0, NG, N, unit, GROUP: tl.constexpr, W: tl.constexpr):
    """Dequantized weights of dense code words w0 .. w0+W of rows ``rn`` (int32 [BLOCK_N, W], 8 columns a word,
    statistics [N, NG] fp16 scales and uint8 zeros, GROUP % 8 == 0) as fp16 [BLOCK_N, 8W] in ``half_order``:
    ``half_pairs``, then (1024 + q) - (1024 + z) (exact) times the fp16 scale, two weights per HADD2/HMUL2 and no
    conversion from float32: exactly the reference's (q - z) * s rounded once to fp16."""
    scale, zero = word_scale_zero(s_ptr, z_ptr, rn, w0, NG, N, GROUP, W)
    return half_weights(words, scale, zero, unit, GROUP, W)


@triton.jit
def half_weights(words, scale, zero, unit, GROUP: tl.constexpr, W: tl.constexpr):
    """``half_tile`` from statistics already loaded (float32, ``per_group``'s compact form)."""
    s, z = half_stats(scale, zero, GROUP, W)
    return tl.reshape((half_pairs(words, unit) - z) * s, (words.shape[0], 8 * W))


@triton.jit
def half_stats(scale, zero, GROUP: tl.constexpr, W: tl.constexpr):
    """``word_scale_zero``'s statistics as ``half_pairs`` operands, [BLOCK_N, W, 1, 1] fp16 (exact): the scale, and
    1024 + zero to subtract from 1024 + q."""
    s = expand_groups(scale.to(tl.float16), GROUP // 8, W)[:, :, None, None]
    z = expand_groups((zero + 1024.0).to(tl.float16), GROUP // 8, W)[:, :, None, None]
    return s, z


@triton.jit
def half_order(x, BLOCK_K: tl.constexpr):
    """Activations x [B, BLOCK_K] (loaded contiguously) in the column order of a ``half_pairs`` tile reshaped to
    [..., BLOCK_K]: tile column 8w + 2j + h holds column 8w + j + 4h, a permutation within each word, applied to
    the small x tile rather than the weight tile."""
    t = tl.permute(tl.reshape(x, (x.shape[0], BLOCK_K // 8, 2, 4)), (0, 1, 3, 2))
    return tl.reshape(t, (x.shape[0], BLOCK_K))
