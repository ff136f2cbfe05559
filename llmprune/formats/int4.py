"""``int4``: dense group-quantized 4-bit weights (GPTQ/RTN codes), the baseline the sparse formats are compared with.

Tensors (g = group size in original input columns, in % g == 0, in % 2 == 0):
    qweight: [out, in/2], uint8 — nibble-packed codes 0..15, ``byte = c[2k] | c[2k+1] << 4`` (low nibble = even
             column).
    scales:  [out, in/g], float16/bfloat16 (float32 allowed; reference path only) — one scale per group.
    zeros:   [out, in/g], uint8 — integer zero point per group (symmetric: 8).
Dequantized ``W[r, c] = (code[r, c] - zeros[r, c // g]) * scales[r, c // g]``; pruned weights hold the zero point.

Worked example (one row, g = 4, scale 0.5, zero 8): weights ``[0.5, 0, -1.5, 3.5]`` have codes ``[9, 8, 5, 15]`` and
are stored as ``qweight = [0x89, 0xF5]``, ``scales = [0.5]``, ``zeros = [8]``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import FORMATS, Format, Spec, float_dtype, shape_error
from ..types import QuantizedWeight
from ._quant import check_int4, dequantize, group_params, group_spec_params, linear_ref, prepare
from .bits import pack_nibbles, unpack_nibbles


def tensor_specs(out_features: int, in_features: int, group: int, dtype: str = "float16") -> dict[str, Spec]:
    groups = in_features // group
    return {"qweight": Spec((out_features, in_features // 2), torch.uint8),
            "scales": Spec((out_features, groups), float_dtype(dtype)),
            "zeros": Spec((out_features, groups), torch.uint8)}


def check(out_features: int, in_features: int, group: int, dtype: str = "float16",
          bits: int = 4) -> None:
    check_int4("int4", out_features, in_features, group, dtype, bits)
    if in_features % 2:
        raise shape_error("int4", out_features, in_features, "in_features must be even (two codes per byte)")


def pack(qw: QuantizedWeight, dtype: str = "float16") -> dict[str, Tensor]:
    """Nibble-pack a ``QuantizedWeight`` with codes < 16; pruned positions get the zero point."""
    _, zeros, codes = prepare(qw, "int4", check, dtype)
    return {"qweight": pack_nibbles(codes).contiguous(), "scales": qw.scales.to(float_dtype(dtype)).contiguous(),
            "zeros": zeros.contiguous()}


def unpack(packed: dict[str, Tensor], in_features: int | None = None) -> Tensor:
    """The exact dequantized weight, float32 ``[out, in]``."""
    codes = unpack_nibbles(packed["qweight"])
    return dequantize(codes, packed["scales"], packed["zeros"], codes.shape[1] // packed["scales"].shape[1])


def matmul_ref(x: Tensor, packed: dict[str, Tensor]) -> Tensor:
    return linear_ref(x, unpack(packed))

FORMAT = FORMATS.add("int4", Format("int4", tensor_specs, pack, unpack, matmul_ref, check, group_params, kernel="int4",
                                    spec_params=group_spec_params))
