"""Average storage bits per weight parameter of a quantized (and possibly sparse) layer.

The accounting counts everything needed to rebuild the weight, per parameter of the dense ``[out, in]`` matrix:

- int-k, groups of g (GPTQ/RTN, asymmetric): ``bits + (16 + 16) / g`` — a 16-bit scale and a 16-bit zero per group
  (the convention of SpQR's Table 1 and GPTQ's group results); symmetric: ``bits + 16 / g`` (the zero is implied).
  With a shorter last group the statistics count ``ceil(in / g)`` groups per row (576 inputs, g128: 5 groups).
- SpQR (Dettmers et al. 2023, arXiv:2306.03078, Sec. 4.2 and its "average bits" formula):
  ``wbits + (scale_bits + zero_bits) / g1 + 2 · (16 + 16) / (g1 · g2) + 32 · outlier_fraction`` — first-level
  statistics quantized to ``stat_bits`` in groups of g2, each group with a 16-bit scale and 16-bit zero for the
  scales and for the zeros, and each outlier a 16-bit value plus a 16-bit column index. w3, g1 = g2 = 16, 3-bit
  statistics: 3 + 6/16 + 64/256 = 3.625, plus 0.32 per 1 % of outliers.
- GQSA group sparsity (whole groups of g dropped): per kept group ``g · bits`` + 16-bit scale + 16-bit zero +
  16-bit group index (the ``group_sparse_int4`` layout), i.e. ``kept · (bits + 48 / g)``; W4S50 g16: 3.5.
- N:M sparsity (e.g. 2:4 + int4): ``kept · bits + kept · ceil(log2 m)`` position bits (2:4: 2 bits per kept value,
  1 bit per parameter, NVIDIA's metadata) plus the group statistics ``32 / g`` over the dense width.
- Other masks (unstructured): a 1-bit keep-map plus ``kept · bits`` plus ``32 / g``.
"""
from __future__ import annotations

import math

from ..types import QuantizedWeight

STAT_BITS = 16  # a scale or zero point stored in float16
INDEX_BITS = 16  # a column or group index stored in int16


def _stats_per_param(group: int, symmetric: bool, in_features: int | None) -> float:
    per_group = STAT_BITS if symmetric else 2 * STAT_BITS
    return per_group / group if in_features is None else per_group * -(-in_features // group) / in_features


def uniform_bits(bits: int, group: int, symmetric: bool = False, in_features: int | None = None) -> float:
    """int-k with one 16-bit scale (and 16-bit zero when asymmetric) per group (``ceil(in/group)`` per row)."""
    return bits + _stats_per_param(group, symmetric, in_features)


def spqr_bits(bits: int, group: int, stat_bits: int, stat_group: int, outlier_fraction: float) -> float:
    """SpQR's average bits (paper formula, see the module docstring)."""
    first = 2 * stat_bits / group
    second = 2 * (STAT_BITS + STAT_BITS) / (group * stat_group)
    return bits + first + second + (STAT_BITS + INDEX_BITS) * outlier_fraction


def group_sparse_bits(bits: int, group: int, kept_fraction: float) -> float:
    """GQSA: only the kept groups are stored, each with its codes, scale, zero and group index."""
    return kept_fraction * (bits + (2 * STAT_BITS + INDEX_BITS) / group)


def nm_bits(bits: int, group: int, n: int, m: int, symmetric: bool = False, in_features: int | None = None) -> float:
    """N:M + int-k: kept codes, ceil(log2 m) position bits per kept value, grids over the dense width."""
    kept = n / m
    return kept * (bits + math.ceil(math.log2(m))) + _stats_per_param(group, symmetric, in_features)


def _whole_groups(mask, group: int) -> bool:
    rows, cols = mask.shape
    blocks = mask.reshape(rows, cols // group, group)
    return bool((blocks.all(-1) | (~blocks).all(-1)).all())


def _nm_of(mask, m: int = 4) -> int | None:
    rows, cols = mask.shape
    if cols % m:
        return None
    kept = mask.reshape(rows, cols // m, m).sum(-1)
    first = int(kept.flatten()[0]) if kept.numel() else 0
    return first if bool((kept == first).all()) and 0 < first < m else None


def bits_per_param(qw: QuantizedWeight) -> float:
    """Average bits per dense parameter of ``qw``, by the accounting of the module docstring."""
    rows, cols = qw.shape
    if "stat_bits" in qw.extra:
        nnz = 0 if qw.outliers is None else int(qw.outliers[2].numel())
        return spqr_bits(qw.bits, qw.group, int(qw.extra["stat_bits"]), int(qw.extra["stat_group"]),
                         nnz / (rows * cols))
    if qw.mask is None:
        return uniform_bits(qw.bits, qw.group, qw.symmetric, cols)
    kept = float(qw.mask.float().mean())
    if kept == 1.0:
        return uniform_bits(qw.bits, qw.group, qw.symmetric, cols)
    if qw.group < cols and cols % qw.group == 0 and _whole_groups(qw.mask, qw.group):
        return group_sparse_bits(qw.bits, qw.group, kept)
    for m in (4, 8, 16):
        n = _nm_of(qw.mask, m)
        if n is not None:
            return nm_bits(qw.bits, qw.group, n, m, qw.symmetric, cols)
    return 1 + kept * qw.bits + _stats_per_param(qw.group, qw.symmetric, cols)
