"""``spqr``: low-bit codes with bilevel (quantized) group statistics + 16-bit outliers in CSR (SpQR).

SpQR (Dettmers et al. 2023, arXiv:2306.03078, §4.1-4.2): weights are quantized in small groups of g1 input columns
(e.g. 3-bit, g1 = 16); the per-group scales and zero points are themselves quantized to ``stat_bits`` (3) bits, in
groups of g2 consecutive output rows of the same column group, with 16-bit second-level scale and zero; weights whose
error stays large are kept exactly as 16-bit outliers in a CSR structure.

Tensors (g1 = ``group``, in % g1 == 0; G = in/g1; R = out/g2, g2 = ``stat_group`` dividing out; nnz = outliers):
    bits, stat_bits: [1], uint8 — the code widths (the packed stream alone does not imply them).
    qweight:         [out, ceil(in*bits/32)], int32 — codes bit-packed little-endian per row (code j occupies bits
                     j*bits .. j*bits+bits-1 of the row's bit stream; see ``formats.bits``).
    scale_codes:     [out, G], uint8 — first-level scales, quantized to stat_bits.
    zero_codes:      [out, G], uint8 — first-level zero points, quantized to stat_bits.
    scale_scale, scale_zero: [R, G], float16 (or the chosen dtype) — second level of the scales: row r, group j uses
                     ``scale[r, j] = (scale_codes[r, j] - scale_zero[r // g2, j]) * scale_scale[r // g2, j]``.
    zero_scale, zero_zero:   [R, G], same — ``zero[r, j] = (zero_codes[r, j] - zero_zero[r // g2, j])
                     * zero_scale[r // g2, j]``.
    outlier_row_ptr: [out+1], int32 — CSR row pointers; outlier_col: [nnz], int16 — columns, ascending per row;
    outlier_val:     [nnz], float16 (or the chosen dtype) — exact outlier weights, overwriting their positions.
Dequantized ``W[r, c] = (code[r, c] - zero[r, c // g1]) * scale[r, c // g1]`` (float32), then outliers overwrite.

Input: a ``QuantizedWeight`` whose ``extra`` holds the bilevel statistics as produced by ``quant/spqr.py``:
``scale_codes, zero_codes`` [out, G] (integers), ``scale_scale, scale_zero, zero_scale, zero_zero`` [R, G],
``stat_bits`` and ``stat_group`` (ints); ``outliers`` is the CSR triple. ``qw.scales``/``qw.zeros`` must be the
first-level statistics reconstructed with the formula above, so ``unpack(pack(qw)) == qw.dequantize()``.

Worked example (bits 3, one row, g1 = 4): codes ``[5, 1, 7, 2]`` -> ``qweight = [0x5CD]`` (bits 101|100|111|010);
with scale 0.25 and zero 4: weights ``[0.25, -0.75, 0.75, -0.5]``; an outlier (col 2, 9.5) gives
``outlier_row_ptr = [0, 1]``, ``outlier_col = [2]``, ``outlier_val = [9.5]`` and ``W = [0.25, -0.75, 9.5, -0.5]``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import FORMATS, Format, Spec, dtype_name, float_dtype, same_params, shape_error
from ..errors import UserInputError
from ..types import QuantizedWeight
from ._quant import check_group, dequantize, group_of, linear_ref
from .bits import pack_bits, packed_words, unpack_bits

_SECOND = ("scale_scale", "scale_zero", "zero_scale", "zero_zero")


def tensor_specs(out_features: int, in_features: int, bits: int, group: int, stat_group: int, nnz: int,
                 stat_bits: int = 3, dtype: str = "float16") -> dict[str, Spec]:
    groups, blocks, fd = in_features // group, out_features // stat_group, float_dtype(dtype)
    specs = {"bits": Spec((1,), torch.uint8), "stat_bits": Spec((1,), torch.uint8),
             "qweight": Spec((out_features, packed_words(in_features, bits)), torch.int32),
             "scale_codes": Spec((out_features, groups), torch.uint8),
             "zero_codes": Spec((out_features, groups), torch.uint8)}
    specs.update({name: Spec((blocks, groups), fd) for name in _SECOND})
    specs.update({"outlier_row_ptr": Spec((out_features + 1,), torch.int32),
                  "outlier_col": Spec((nnz,), torch.int16), "outlier_val": Spec((nnz,), fd)})
    return specs


def check(out_features: int, in_features: int, bits: int, group: int, stat_group: int, nnz: int = 0,
          stat_bits: int = 3, dtype: str = "float16") -> None:
    check_group("spqr", out_features, in_features, group)
    if not 1 <= bits <= 8 or not 1 <= stat_bits <= 8:
        raise shape_error("spqr", out_features, in_features, "bits and stat_bits must be 1..8")
    if stat_group < 1 or out_features % stat_group:
        raise shape_error("spqr", out_features, in_features, f"stat_group {stat_group} must divide out_features "
                                                             f"(second-level groups of rows)")
    if in_features > 32767:
        raise shape_error("spqr", out_features, in_features, "outlier columns are int16: in_features must be < 32768")
    float_dtype(dtype)


def _extra(qw: QuantizedWeight) -> dict:
    missing = [k for k in ("scale_codes", "zero_codes", *_SECOND, "stat_bits", "stat_group") if k not in qw.extra]
    if missing:
        raise UserInputError(f"--format spqr needs SpQR's bilevel statistics (missing {', '.join(missing)}); "
                             f"quantize with the spqr quantizer (--quant w3g16 --quantizer spqr)")
    return qw.extra


def _csr(qw: QuantizedWeight, dtype: torch.dtype) -> dict[str, Tensor]:
    out_features = qw.shape[0]
    if qw.outliers is None:
        row_ptr = torch.zeros(out_features + 1, dtype=torch.int64)
        cols, vals = torch.zeros(0, dtype=torch.int64), torch.zeros(0)
    else:
        row_ptr, cols, vals = qw.outliers
    return {"outlier_row_ptr": row_ptr.to(torch.int32).contiguous(), "outlier_col": cols.to(torch.int16).contiguous(),
            "outlier_val": vals.to(dtype).contiguous()}


def pack(qw: QuantizedWeight, dtype: str = "float16") -> dict[str, Tensor]:
    """Bit-pack the codes and store the bilevel statistics and the outlier CSR of an SpQR ``QuantizedWeight``."""
    if not isinstance(qw, QuantizedWeight):
        raise UserInputError("--format spqr stores SpQR-quantized weights; add --quant w3g16 --quantizer spqr")
    extra = _extra(qw)
    out_features, in_features = qw.shape
    nnz = 0 if qw.outliers is None else int(qw.outliers[2].numel())
    check(out_features, in_features, qw.bits, group_of(qw), int(extra["stat_group"]), nnz, int(extra["stat_bits"]),
          dtype)
    fd = float_dtype(dtype)
    packed = {"bits": torch.tensor([qw.bits], dtype=torch.uint8),
              "stat_bits": torch.tensor([int(extra["stat_bits"])], dtype=torch.uint8),
              "qweight": pack_bits(qw.codes, qw.bits).contiguous(),
              "scale_codes": extra["scale_codes"].to(torch.uint8).contiguous(),
              "zero_codes": extra["zero_codes"].to(torch.uint8).contiguous()}
    packed.update({name: extra[name].to(fd).contiguous() for name in _SECOND})
    packed.update(_csr(qw, fd))
    return packed


def first_level(packed: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """The dequantized first-level ``scale, zero [out, G]`` (float32) from the bilevel statistics."""
    out_features = packed["scale_codes"].shape[0]
    block = out_features // packed["scale_scale"].shape[0]
    rows = torch.arange(out_features, device=packed["scale_codes"].device) // block
    f32 = {name: packed[name].to(torch.float32)[rows] for name in _SECOND}
    scale = (packed["scale_codes"].to(torch.float32) - f32["scale_zero"]) * f32["scale_scale"]
    zero = (packed["zero_codes"].to(torch.float32) - f32["zero_zero"]) * f32["zero_scale"]
    return scale, zero


def unpack(packed: dict[str, Tensor], in_features: int | None = None) -> Tensor:
    """The exact dequantized weight, float32 ``[out, in]``, outliers included (``in_features`` is required)."""
    if in_features is None:
        raise TypeError("spqr.unpack needs in_features (row padding hides the width in the bit stream)")
    out_features, groups = packed["scale_codes"].shape
    scale, zero = first_level(packed)
    codes = unpack_bits(packed["qweight"], int(packed["bits"][0]), in_features)
    weight = dequantize(codes, scale, zero, in_features // groups)
    row_ptr = packed["outlier_row_ptr"].to(torch.int64)
    rows = torch.repeat_interleave(torch.arange(out_features, device=weight.device), row_ptr.diff())
    weight[rows, packed["outlier_col"].to(torch.int64)] = packed["outlier_val"].to(torch.float32)
    return weight


def matmul_ref(x: Tensor, packed: dict[str, Tensor]) -> Tensor:
    return linear_ref(x, unpack(packed, x.shape[-1]))


def params(packed: dict[str, Tensor], in_features: int) -> dict:
    out_features, groups = packed["scale_codes"].shape
    return {"bits": int(packed["bits"][0]), "group": in_features // groups,
            "stat_group": out_features // packed["scale_scale"].shape[0], "nnz": packed["outlier_val"].numel(),
            "stat_bits": int(packed["stat_bits"][0]), "dtype": dtype_name(packed["outlier_val"].dtype)}


def stack_rows(packeds: list[dict[str, Tensor]], in_features: int) -> dict[str, Tensor]:
    """``formats.stack_rows`` for spqr: one pair of code widths; each part's outlier row pointers shifted by the
    outliers before it. The second-level statistics stack like the rest (same ``stat_group``, which divides each
    part's rows, so no block of rows straddles two parts)."""
    same_params(FORMAT, packeds, in_features, ignore=("nnz",))
    starts = [0]
    for p in packeds:
        starts.append(starts[-1] + p["outlier_val"].numel())
    row_ptr = torch.cat([p["outlier_row_ptr"][:-1] + start for p, start in zip(packeds, starts)]
                        + [packeds[0]["outlier_row_ptr"].new_tensor([starts[-1]])])
    shared = {"bits", "stat_bits"}
    stacked = {name: packeds[0][name] if name in shared else torch.cat([p[name] for p in packeds])
               for name in packeds[0] if name != "outlier_row_ptr"}
    stacked["outlier_row_ptr"] = row_ptr
    return stacked


def spec_params(quant, in_features: int) -> dict:
    """Parameters ``check`` takes for a recipe's ``QuantSpec``: SpQR's settings as the quantizer resolves them
    (``quant/spqr.settings_of``), the weight group 16 when the spec names none."""
    from ..quant.spqr import settings_of

    settings = settings_of(dict(quant.options))
    return {"bits": quant.bits, "group": quant.group or 16, "stat_group": settings["stat_group"],
            "stat_bits": settings["stat_bits"]}

FORMAT = FORMATS.add("spqr", Format("spqr", tensor_specs, pack, unpack, matmul_ref, check, params, kernel="spqr",
                                    spec_params=spec_params, stack_rows=stack_rows))
