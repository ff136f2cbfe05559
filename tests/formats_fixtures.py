"""Builders of random ``QuantizedWeight``s for the format tests (independent of llmprune.formats).

Each builder draws codes/scales/zeros directly, so the oracle ``QuantizedWeight.dequantize`` (llmprune/types.py) and
the format code share nothing but the data.
"""
from __future__ import annotations

import torch

from llmprune.types import QuantizedWeight

FLOATS = [torch.float16, torch.bfloat16, torch.float32]


def _scales(out_f: int, groups: int, gen: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """Positive scales exactly representable in ``dtype`` (so fp16/bf16 storage is lossless)."""
    return (torch.rand(out_f, groups, generator=gen) * 0.1 + 0.001).to(dtype).to(torch.float32)


def random_qw(out_f: int, in_f: int, group: int, *, bits: int = 4, symmetric: bool = False, pattern: str = "dense",
              seed: int = 0, dtype: torch.dtype = torch.float16) -> QuantizedWeight:
    """pattern: dense | 24 (2:4, random positions, some groups keep < 2) | groups (whole groups pruned, per row)
    | unstructured (random mask)."""
    gen = torch.Generator().manual_seed(seed)
    groups = in_f // group
    codes = torch.randint(0, 1 << bits, (out_f, in_f), generator=gen).to(torch.uint8)
    zeros = torch.full((out_f, groups), float(1 << (bits - 1))) if symmetric else \
        torch.randint(0, 1 << bits, (out_f, groups), generator=gen).float()
    mask = _mask(pattern, out_f, in_f, group, gen)
    if mask is not None:
        cols = torch.arange(in_f) // group
        codes = torch.where(mask, codes, zeros[:, cols].to(torch.uint8))
    return QuantizedWeight(codes, _scales(out_f, groups, gen, dtype), zeros, bits, group, symmetric, mask)


def _mask(pattern: str, out_f: int, in_f: int, group: int, gen: torch.Generator):
    if pattern == "dense":
        return None
    if pattern == "unstructured":
        return torch.rand(out_f, in_f, generator=gen) < 0.5
    if pattern == "24":
        scores = torch.rand(out_f, in_f // 4, 4, generator=gen)
        keep = torch.zeros_like(scores, dtype=torch.bool).scatter(-1, scores.topk(2, dim=-1).indices, True)
        drop_more = torch.rand(out_f, in_f // 4, 4, generator=gen) < 0.2  # some groups keep fewer than 2
        return (keep & ~drop_more).reshape(out_f, in_f)
    if pattern == "groups":
        live = torch.rand(out_f, in_f // group, generator=gen) < 0.5
        return live.repeat_interleave(group, dim=1)
    raise ValueError(pattern)


def random_spqr_qw(out_f: int, in_f: int, group: int, stat_group: int, *, bits: int = 3, stat_bits: int = 3,
                   outlier_frac: float = 0.05, seed: int = 0, dtype: torch.dtype = torch.float16) -> QuantizedWeight:
    """An SpQR-style weight: bilevel statistics drawn as codes + 16-bit second level, first level reconstructed by
    the formula of the SpQR paper (§4.2), plus random CSR outliers."""
    gen = torch.Generator().manual_seed(seed)
    groups, blocks = in_f // group, -(-out_f // stat_group)
    rows = torch.arange(out_f) // stat_group
    smax = (1 << stat_bits) - 1
    ext = {"scale_codes": torch.randint(0, smax + 1, (out_f, groups), generator=gen).to(torch.uint8),
           "zero_codes": torch.randint(0, smax + 1, (out_f, groups), generator=gen).to(torch.uint8),
           "scale_scale": (torch.rand(blocks, groups, generator=gen) * 0.01 + 0.001).to(dtype).float(),
           "scale_zero": torch.full((blocks, groups), -1.0).to(dtype).float(),
           "zero_scale": (torch.rand(blocks, groups, generator=gen) + 0.5).to(dtype).float(),
           "zero_zero": torch.randint(0, smax + 1, (blocks, groups), generator=gen).float(),
           "stat_bits": stat_bits, "stat_group": stat_group}
    scales = (ext["scale_codes"].float() - ext["scale_zero"][rows]) * ext["scale_scale"][rows]
    zeros = (ext["zero_codes"].float() - ext["zero_zero"][rows]) * ext["zero_scale"][rows]
    codes = torch.randint(0, 1 << bits, (out_f, in_f), generator=gen).to(torch.uint8)
    is_out = torch.rand(out_f, in_f, generator=gen) < outlier_frac
    r, c = is_out.nonzero(as_tuple=True)
    row_ptr = torch.cat([torch.zeros(1, dtype=torch.int64), torch.bincount(r, minlength=out_f).cumsum(0)])
    values = (torch.randn(len(r), generator=gen) * 4).to(dtype)
    return QuantizedWeight(codes, scales, zeros, bits, group, False, None, (row_ptr, c.to(torch.int32), values), ext)


def rtn(weight: torch.Tensor, group: int, *, bits: int = 4, symmetric: bool = False, mask=None) -> QuantizedWeight:
    """Round-to-nearest min/max quantization (test-side; the library's quantizers live in llmprune/quant)."""
    out_f, in_f = weight.shape
    w = weight.float().reshape(out_f, in_f // group, group)
    qmax = (1 << bits) - 1
    if symmetric:
        scale = (w.abs().amax(-1) / (qmax // 2 + 0.5)).clamp(min=1e-8)
        zero = torch.full_like(scale, float(1 << (bits - 1)))
    else:
        lo, hi = w.amin(-1).clamp(max=0), w.amax(-1).clamp(min=0)
        scale = ((hi - lo) / qmax).clamp(min=1e-8)
        zero = (-lo / scale).round()
    scale = scale.half().float()
    codes = (w / scale.unsqueeze(-1) + zero.unsqueeze(-1)).round().clamp(0, qmax).reshape(out_f, in_f)
    if mask is not None:
        codes = torch.where(mask, codes, zero.repeat_interleave(group, dim=1))
    return QuantizedWeight(codes.to(torch.uint8), scale, zero, bits, group, symmetric, mask)


def mask_24(weight: torch.Tensor) -> torch.Tensor:
    """Keep the 2 largest-magnitude weights of every 4 consecutive inputs."""
    out_f, in_f = weight.shape
    a = weight.abs().reshape(out_f, in_f // 4, 4)
    return torch.zeros_like(a, dtype=torch.bool).scatter(-1, a.topk(2, dim=-1).indices, True).reshape(out_f, in_f)


def mask_groups(weight: torch.Tensor, group: int, frac: float = 0.5) -> torch.Tensor:
    """Keep the (1 - frac) groups of ``group`` inputs with the largest L2 norm in every row."""
    out_f, in_f = weight.shape
    norms = weight.reshape(out_f, in_f // group, group).norm(dim=-1)
    kept = max(1, round(norms.shape[1] * (1 - frac)))
    live = torch.zeros_like(norms, dtype=torch.bool).scatter(-1, norms.topk(kept, dim=-1).indices, True)
    return live.repeat_interleave(group, dim=1)


def spqr_like(weight: torch.Tensor, group: int, stat_group: int, *, bits: int = 3) -> QuantizedWeight:
    """An SpQR-shaped QuantizedWeight for a real weight: random bilevel stats, the largest 1% kept as outliers."""
    out_f, in_f = weight.shape
    qw = random_spqr_qw(out_f, in_f, group, stat_group, bits=bits, outlier_frac=0.0, dtype=torch.float32)
    thr = weight.abs().flatten().kthvalue(max(1, int(0.99 * weight.numel()))).values
    r, c = (weight.abs() > thr).nonzero(as_tuple=True)
    row_ptr = torch.cat([torch.zeros(1, dtype=torch.int64), torch.bincount(r, minlength=out_f).cumsum(0)])
    qw.outliers = (row_ptr, c.to(torch.int32), weight[r, c].to(torch.float32))
    return qw
