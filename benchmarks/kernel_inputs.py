"""Random packed weights for benchmarks/kernels.py: non-zero tensors in the docs/FORMATS.md layout of each format,
made directly on the device (no quantization pass), at the shapes and settings the benchmark reports: int4 and
sparse24_int4 g128, GQSA W4S50 g16, SpQR w3 g16 with second-level groups of 16 rows and 1% outliers.
"""
from __future__ import annotations

import torch

G = 128  # int4 / sparse24_int4 group; GQSA uses g16 at 50% kept groups (W4S50); SpQR w3 g16, stat groups of 16, 1%
NIBBLES_24 = torch.tensor([0 | 1 << 2, 0 | 2 << 2, 0 | 3 << 2, 1 | 2 << 2, 1 | 3 << 2, 2 | 3 << 2], dtype=torch.uint8)


def _u8(gen, shape, high=256):
    return torch.randint(0, high, shape, generator=gen, device=gen.device, dtype=torch.uint8)


def _meta(gen, n, k):
    nib = NIBBLES_24.to(gen.device)[torch.randint(0, 6, (n, k // 4), generator=gen, device=gen.device)]
    return nib[:, 0::2] | (nib[:, 1::2] << 4)


def _scales(gen, shape, dtype, lo=0.005, hi=0.015):
    return (lo + (hi - lo) * torch.rand(shape, generator=gen, device=gen.device)).to(dtype)


def random_packed(fmt: str, n: int, k: int, dtype: torch.dtype, seed: int = 0, device: str = "cuda") -> dict:
    """Random non-zero packed tensors in the docs/FORMATS.md layout, made on ``device`` (no quantization pass)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    if fmt == "int4":
        return {"qweight": _u8(gen, (n, k // 2)), "scales": _scales(gen, (n, k // G), dtype),
                "zeros": _u8(gen, (n, k // G), 16)}
    if fmt == "sparse24":
        vals = (torch.randn(n, k // 2, generator=gen, device=device) * 0.02).to(dtype)
        return {"values": vals, "meta": _meta(gen, n, k)}
    if fmt == "sparse24_int4":
        return {"qvalues": _u8(gen, (n, k // 4)), "meta": _meta(gen, n, k), "scales": _scales(gen, (n, k // G), dtype),
                "zeros": _u8(gen, (n, k // G), 16)}
    if fmt == "group_sparse_int4":
        groups, g = k // 16, 16
        idx = torch.rand(n, groups, generator=gen, device=device).argsort(-1)[:, : groups // 2].sort(-1).values
        return {"group_idx": idx.to(torch.int16).contiguous(), "qweight": _u8(gen, (n, groups // 2 * g // 2)),
                "scales": _scales(gen, (n, groups // 2), dtype), "zeros": _u8(gen, (n, groups // 2), 16)}
    return _random_spqr(gen, n, k, dtype)


def _random_spqr(gen, n, k, dtype, bits=3, g1=16, g2=16, per_row=None):
    groups, blocks, per_row, dev = k // g1, -(-n // g2), per_row or max(1, k // 100), gen.device
    words = torch.randint(-2**31, 2**31 - 1, (n, -(-k * bits // 32)), generator=gen, device=dev, dtype=torch.int32)
    cols = torch.rand(n, k, generator=gen, device=dev).topk(per_row, dim=-1).indices.sort(-1).values
    return {"bits": torch.tensor([bits], dtype=torch.uint8, device=dev),
            "stat_bits": torch.tensor([3], dtype=torch.uint8, device=dev), "qweight": words,
            "scale_codes": _u8(gen, (n, groups), 8), "zero_codes": _u8(gen, (n, groups), 8),
            "scale_scale": _scales(gen, (blocks, groups), dtype, 0.001, 0.002),
            "scale_zero": _scales(gen, (blocks, groups), dtype, -2.0, -1.0),
            "zero_scale": _scales(gen, (blocks, groups), dtype, 0.5, 1.0),
            "zero_zero": _scales(gen, (blocks, groups), dtype, -0.5, 0.5),
            "outlier_row_ptr": (torch.arange(n + 1, device=dev) * per_row).to(torch.int32),
            "outlier_col": cols.reshape(-1).to(torch.int16),
            "outlier_val": _scales(gen, (n * per_row,), dtype, -0.2, 0.2)}


def nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)
