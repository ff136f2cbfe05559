"""Helpers shared by the group-quantized formats (int4, sparse24_int4, group_sparse_int4).

Dequantization is computed exactly as ``QuantizedWeight.dequantize`` does it: ``(code - zero) * scale`` in float32,
so ``unpack(pack(qw)) == qw.dequantize()`` bit for bit whenever the scales are representable in the storage dtype
(always, with ``dtype=float32``; float16/bfloat16 round the scales once, at pack time).
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import dtype_name, float_dtype
from ..errors import UserInputError
from ..types import QuantizedWeight


def group_of(qw: QuantizedWeight) -> int:
    """The quantization group size in input columns (``group == 0`` means one group per row)."""
    return qw.group or qw.codes.shape[1]


def require_quantized(qw, fmt: str, max_bits: int = 4) -> QuantizedWeight:
    if not isinstance(qw, QuantizedWeight):
        from . import needs_quant

        raise needs_quant(fmt)
    if qw.bits > max_bits:
        raise UserInputError(f"--format {fmt} holds at most {max_bits}-bit codes, got {qw.bits}-bit; use --quant w4...")
    if qw.outliers is not None:
        raise UserInputError(f"--format {fmt} cannot hold SpQR outliers; use --format spqr")
    return qw


def zero_codes(qw: QuantizedWeight, fmt: str) -> Tensor:
    """Zero points as uint8 integers (they must be whole numbers in 0..2**bits-1 to be stored)."""
    z = qw.zeros
    if not torch.equal(z, z.round()) or (z.numel() and (float(z.min()) < 0 or float(z.max()) > (1 << qw.bits) - 1)):
        raise UserInputError(f"--format {fmt} stores integer zero points in 0..{(1 << qw.bits) - 1}; "
                             f"these are not (use a uniform quantizer such as --quant w4g64)")
    return z.to(torch.uint8)


def masked_codes(qw: QuantizedWeight, zeros: Tensor, group: int) -> Tensor:
    """Codes with pruned positions set to the zero point, so they dequantize to exactly 0."""
    codes = qw.codes.to(torch.uint8)
    if qw.mask is None:
        return codes
    cols = torch.arange(codes.shape[1], device=codes.device) // group
    return torch.where(qw.mask.bool(), codes, zeros[:, cols])


def dequantize(codes: Tensor, scales: Tensor, zeros: Tensor, group: int) -> Tensor:
    """``(code - zero) * scale`` in float32 for ``codes [out, in]``, per-group ``scales, zeros [out, in/group]``."""
    cols = torch.arange(codes.shape[1], device=codes.device) // group
    return (codes.to(torch.float32) - zeros.to(torch.float32)[:, cols]) * scales.to(torch.float32)[:, cols]


def linear_ref(x: Tensor, weight: Tensor) -> Tensor:
    """``x @ weight.T`` in the activation dtype (the reference path of every format)."""
    return torch.nn.functional.linear(x, weight.to(device=x.device, dtype=x.dtype))


def check_int4(fmt: str, out_features: int, in_features: int, group: int, dtype: str, bits: int) -> None:
    """The checks every nibble format shares: codes fit 4 bits, the group divides the row, a storable dtype."""
    if bits > 4:
        raise UserInputError(f"--format {fmt} holds codes of at most 4 bits, not {bits}; use --quant w4...")
    check_group(fmt, out_features, in_features, group)
    float_dtype(dtype)


def prepare(qw, fmt: str, check, dtype: str) -> tuple[int, Tensor, Tensor]:
    """Checks shared by the nibble formats' ``pack``; returns ``(group, zeros uint8, codes with pruned = zero)``."""
    require_quantized(qw, fmt)
    group = group_of(qw)
    check(*qw.shape, group, dtype=dtype)
    zeros = zero_codes(qw, fmt)
    return group, zeros, masked_codes(qw, zeros, group)


def check_group(fmt: str, out_features: int, in_features: int, group: int) -> None:
    if group < 1 or in_features % group:
        raise UserInputError(f"--format {fmt}: group size {group} does not divide in_features {in_features} of a "
                             f"{out_features}x{in_features} Linear; choose a group that divides it "
                             f"(e.g. --quant w4g{_divisor(in_features)})")


def _divisor(n: int) -> int:
    return next(g for g in (128, 64, 32, 16, 8, 4, 2, 1) if n % g == 0)


def group_params(packed: dict[str, Tensor], in_features: int) -> dict:
    """``params`` of a nibble format whose ``scales`` hold one column per quantization group."""
    return {"group": in_features // packed["scales"].shape[1], "dtype": dtype_name(packed["scales"].dtype)}


def group_spec_params(quant, in_features: int) -> dict:
    """Parameters ``check`` takes for a recipe's ``QuantSpec`` (group 0 = one group per row)."""
    return {"group": quant.group or in_features, "bits": quant.bits}
