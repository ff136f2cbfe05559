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
        mask = torch.zeros(out_f, in_f // 4, 4, dtype=torch.bool).scatter_(-1, order[..., :2], True).reshape(out_f, in_f)
    elif pattern == "groups":
        order = torch.rand(out_f, n_groups, generator=gen).argsort(-1)[:, :keep_groups]
        gmask = torch.zeros(out_f, n_groups, dtype=torch.bool).scatter_(1, order, True)
        mask = gmask.repeat_interleave(group, dim=1)
    if mask is not None:  # pruned positions hold the zero point (types.QuantizedWeight contract)
        codes = torch.where(mask, codes, zeros.repeat_interleave(group, dim=1).to(torch.uint8))
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
