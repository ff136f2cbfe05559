"""Test-side inputs for the kernel tests: random quantized weights and an independent packer per docs/FORMATS.md.

The packers here are written from the layout document alone (not from llmprune.formats), so comparing their bytes
with ``llmprune.formats.<fmt>.pack`` checks that both sides read the contract the same way; the float64 oracle
``dense_oracle`` multiplies by ``QuantizedWeight.dequantize`` and never looks at packed bytes.
"""
from __future__ import annotations

import torch
from torch import Tensor

from llmprune.types import QuantizedWeight


def _nibbles(codes: Tensor) -> Tensor:
    c = codes.to(torch.uint8)
    return c[:, 0::2] | (c[:, 1::2] << 4)


def random_qw(out_f: int, in_f: int, group: int, dtype: torch.dtype, *, seed: int, pattern: str = "dense",
              keep_groups: int | None = None, bits: int = 4) -> QuantizedWeight:
    """Random codes/scales/zeros (scales representable in ``dtype``) with an optional 2:4 or group keep-mask."""
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 2**bits, (out_f, in_f), generator=gen, dtype=torch.uint8)
    n_groups = in_f // group
    scales = (0.02 + 0.05 * torch.rand(out_f, n_groups, generator=gen)).to(dtype).to(torch.float32)
    zeros = torch.randint(0, 2**bits, (out_f, n_groups), generator=gen).to(torch.float32)
    mask = None
    if pattern == "2:4":
        order = torch.rand(out_f, in_f // 4, 4, generator=gen).argsort(-1)
        mask = torch.zeros(out_f, in_f // 4, 4, dtype=torch.bool).scatter_(-1, order[..., :2], True)
        mask = mask.reshape(out_f, in_f)
    elif pattern == "groups":
        order = torch.rand(out_f, n_groups, generator=gen).argsort(-1)[:, :keep_groups]
        gmask = torch.zeros(out_f, n_groups, dtype=torch.bool).scatter_(1, order, True)
        mask = gmask.repeat_interleave(group, dim=1)
    if mask is not None:  # pruned positions hold the zero point (types.QuantizedWeight contract) ...
        z = zeros.repeat_interleave(group, dim=1).to(torch.uint8)
        codes = torch.where(codes == z, (codes + 1) % 2**bits, codes)  # ... and kept ones never dequantize to 0,
        codes = torch.where(mask, codes, z)  # so the kept positions are unambiguous for any packer
    return QuantizedWeight(codes, scales, zeros, bits, group, mask=mask)


def _meta(mask: Tensor) -> Tensor:
    """Kept positions p0 < p1 of each group of 4 as the nibble p0 | p1 << 2, two groups per byte."""
    out_f, in_f = mask.shape
    pos = torch.arange(4).expand(out_f, in_f // 4, 4)
    kept = pos[mask.reshape(out_f, in_f // 4, 4)].reshape(out_f, in_f // 4, 2)
    nib = kept[..., 0] | (kept[..., 1] << 2)
    return _nibbles(nib)


def _kept(t: Tensor, mask: Tensor) -> Tensor:
    return t[mask].reshape(t.shape[0], -1)


def pack_int4(qw: QuantizedWeight, dtype: torch.dtype) -> dict:
    return {"qweight": _nibbles(qw.codes), "scales": qw.scales.to(dtype), "zeros": qw.zeros.to(torch.uint8)}


def pack_sparse24(qw: QuantizedWeight, dtype: torch.dtype) -> dict:
    return {"values": _kept(qw.dequantize(dtype), qw.mask), "meta": _meta(qw.mask)}


def pack_sparse24_int4(qw: QuantizedWeight, dtype: torch.dtype) -> dict:
    return {"qvalues": _nibbles(_kept(qw.codes, qw.mask)), "meta": _meta(qw.mask),
            "scales": qw.scales.to(dtype), "zeros": qw.zeros.to(torch.uint8)}


def pack_group_sparse_int4(qw: QuantizedWeight, dtype: torch.dtype) -> dict:
    gmask = qw.mask[:, :: qw.group]
    n_keep = int(gmask[0].sum())
    idx = torch.arange(gmask.shape[1]).expand_as(gmask)[gmask].reshape(-1, n_keep)
    return {"group_idx": idx.to(torch.int16), "qweight": _nibbles(_kept(qw.codes, qw.mask)),
            "scales": torch.gather(qw.scales, 1, idx).to(dtype),
            "zeros": torch.gather(qw.zeros, 1, idx).to(torch.uint8)}


PACKERS = {"int4": pack_int4, "sparse24": pack_sparse24, "sparse24_int4": pack_sparse24_int4,
           "group_sparse_int4": pack_group_sparse_int4}


def dense_oracle(x: Tensor, qw: QuantizedWeight, dtype: torch.dtype) -> Tensor:
    """x @ W.T in float64 from the dequantized weight (rounded to ``dtype`` first, as a 16-bit format stores it)."""
    w = qw.dequantize(torch.float32).to(dtype).to(torch.float64)
    return x.to(torch.float64) @ w.T


def random_spqr_qw(out_f: int, in_f: int, dtype: torch.dtype, *, seed: int, bits: int = 3, group: int = 8,
                   stat_group: int = 4, outlier_frac: float = 0.05) -> QuantizedWeight:
    """An SpQR weight: bilevel statistics (second level representable in ``dtype``), first level rebuilt from them,
    and CSR outliers (row 0 keeps none, row 1 keeps many) as quant/spqr.py hands them to the packer."""
    gen = torch.Generator().manual_seed(seed)
    n_groups, blocks = in_f // group, -(-out_f // stat_group)
    codes = torch.randint(0, 2**bits, (out_f, in_f), generator=gen, dtype=torch.uint8)
    sc = torch.randint(0, 8, (out_f, n_groups), generator=gen)
    zc = torch.randint(0, 8, (out_f, n_groups), generator=gen)

    def second(lo, hi):
        return (lo + (hi - lo) * torch.rand(blocks, n_groups, generator=gen)).to(dtype).to(torch.float32)

    ss, sz, zs, zz = second(0.004, 0.01), second(-2.0, -1.0), second(0.5, 1.0), second(-0.5, 0.5)
    rows = torch.arange(out_f) // stat_group
    scales = (sc - sz[rows]) * ss[rows]
    zeros = (zc - zz[rows]) * zs[rows]
    hit = torch.rand(out_f, in_f, generator=gen) < outlier_frac
    hit[0] = False
    hit[1, ::3] = True
    row_ptr = torch.cat([torch.zeros(1, dtype=torch.int64), hit.sum(1).cumsum(0)])
    cols = hit.nonzero()[:, 1]
    vals = (torch.randn(cols.numel(), generator=gen) * 0.5).to(dtype)
    extra = {"scale_codes": sc, "zero_codes": zc, "scale_scale": ss, "scale_zero": sz, "zero_scale": zs,
             "zero_zero": zz, "stat_bits": 3, "stat_group": stat_group}
    return QuantizedWeight(codes, scales, zeros, bits, group, outliers=(row_ptr, cols.to(torch.int32), vals),
                           extra=extra)
