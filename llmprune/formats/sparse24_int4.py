"""``sparse24_int4``: 2:4 sparsity with the kept values as int4 group-quantized codes (Sparse-Marlin-like storage).

Tensors (in % 8 == 0, in % g == 0; groups count original input columns, so a g128 group holds 64 kept values):
    qvalues: [out, in/4], uint8 — nibble-packed codes of the kept values, in the order of ``sparse24``'s ``values``
             (low nibble = even kept index).
    meta:    [out, in/8], uint8 — kept positions, exactly as ``sparse24`` (nibble ``p0 | p1 << 2`` per group of 4).
    scales:  [out, in/g], float16/bfloat16 (float32 allowed; reference path only).
    zeros:   [out, in/g], uint8 — integer zero points.
Dequantized ``W[r, c] = (code - zeros[r, c // g]) * scales[r, c // g]`` at kept columns, 0 elsewhere; a group of 4
with fewer than 2 kept weights stores the zero point in its filler slot (Frantar et al., Sparse-Marlin, 2024).

Worked example (one row, 8 columns, g = 8, scale 0.5, zero 8): ``[0, 1.5, 0, -2, | 3, 0, 0, 0]`` keeps positions
(1, 3) and (0, 1); kept codes ``[11, 4, 14, 8]`` -> ``qvalues = [0x4B, 0x8E]``, ``meta = [0x4D]``, ``scales = [0.5]``,
``zeros = [8]``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import FORMATS, Format, Spec, float_dtype
from ..types import QuantizedWeight
from ._nm import check_24, pack_meta, positions, unpack_meta
from ._quant import check_int4, dequantize, group_params, group_spec_params, linear_ref, prepare
from .bits import pack_nibbles, unpack_nibbles


def tensor_specs(out_features: int, in_features: int, group: int, dtype: str = "float16") -> dict[str, Spec]:
    groups = in_features // group
    return {"qvalues": Spec((out_features, in_features // 4), torch.uint8),
            "meta": Spec((out_features, in_features // 8), torch.uint8),
            "scales": Spec((out_features, groups), float_dtype(dtype)),
            "zeros": Spec((out_features, groups), torch.uint8)}


def check(out_features: int, in_features: int, group: int, dtype: str = "float16",
          bits: int = 4) -> None:
    check_24("sparse24_int4", out_features, in_features)
    check_int4("sparse24_int4", out_features, in_features, group, dtype, bits)


def pack(qw: QuantizedWeight, dtype: str = "float16") -> dict[str, Tensor]:
    """Pack a 2:4-sparse ``QuantizedWeight`` (its mask, or its non-zero dequantized weights, give the pattern)."""
    group, zeros, codes = prepare(qw, "sparse24_int4", check, dtype)
    out_features, in_features = qw.shape
    cols_z = torch.arange(in_features, device=codes.device) // group
    keep = codes != zeros[:, cols_z]  # a kept code equal to the zero point is an exact 0 and needs no slot
    pos = positions(keep, "sparse24_int4")
    cols = (pos + 4 * torch.arange(in_features // 4, device=pos.device).unsqueeze(-1)).reshape(out_features, -1)
    return {"qvalues": pack_nibbles(codes.gather(1, cols)).contiguous(), "meta": pack_meta(pos).contiguous(),
            "scales": qw.scales.to(float_dtype(dtype)).contiguous(), "zeros": zeros.contiguous()}


def unpack(packed: dict[str, Tensor], in_features: int | None = None) -> Tensor:
    """The exact dequantized weight, float32 ``[out, in]`` (exact zeros at pruned columns)."""
    meta = packed["meta"]
    cols = unpack_meta(meta)
    in_features = meta.shape[1] * 8
    group = in_features // packed["scales"].shape[1]
    kept = unpack_nibbles(packed["qvalues"])
    codes = packed["zeros"][:, torch.arange(in_features, device=meta.device) // group].clone()
    codes.scatter_(1, cols, kept)
    return dequantize(codes, packed["scales"], packed["zeros"], group)


def matmul_ref(x: Tensor, packed: dict[str, Tensor]) -> Tensor:
    return linear_ref(x, unpack(packed))

FORMAT = FORMATS.add("sparse24_int4", Format("sparse24_int4", tensor_specs, pack, unpack, matmul_ref, check, group_params,
                                             kernel="sparse24_int4", spec_params=group_spec_params))
