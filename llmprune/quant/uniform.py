"""Uniform k-bit quantizer primitives: per-group scale/zero from min-max, codes, dequantization, shape checks.

Source: GPTQ's reference ``quant.py`` (Frantar et al. 2022, arXiv:2210.17323): asymmetric grids span
[min(w, 0), max(w, 0)] with ``scale = (max - min) / maxq`` and the integer ``zero = round(-min / scale)``; symmetric
grids put the zero at ``(maxq + 1) / 2``. SpQR's quantizer (Dettmers et al. 2023, ``quant_groups.py``) is the same
min-max grid without the clamp to 0 and with an unrounded zero; ``clamp_zero=False, round_zero=False`` selects it.

A group is ``group`` consecutive input columns of one output row (``group == 0``: the whole row, one group). When
``group`` does not divide ``in_features`` the last group is shorter (``ceil(in / group)`` groups), as in GPTQ's
reference, whose group boundaries are ``column % group == 0`` (SmolLM2's 576 inputs in groups of 128 give four groups
of 128 and one of 64); ``QuantizedWeight.dequantize`` handles it. The packed formats need ``in % group == 0`` and
refuse other sizes when packing; SpQR needs it too (``check_quant_shape``).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..errors import UserInputError
from ..recipe import QuantSpec

SPQR_DEFAULT_GROUP = 16


def maxq(bits: int) -> int:
    return (1 << bits) - 1


def find_params(w: Tensor, bits: int, symmetric: bool = False, *, clamp_zero: bool = True,
                round_zero: bool = True) -> tuple[Tensor, Tensor]:
    """Min-max grid of each row of ``w [rows, k]``: returns ``(scale [rows], zero [rows])``.

    A row whose range is empty (all equal, e.g. all zero) gets the range [-1, 1], as both references do.

    Deviation: symmetric grids always span [-amax, amax]; GPTQ's reference keeps min = 0 for a row without negative
    values, which makes the upper half of such a row clip.
    """
    top = maxq(bits)
    xmin, xmax = w.min(dim=1).values, w.max(dim=1).values
    if clamp_zero:
        xmin, xmax = xmin.clamp(max=0), xmax.clamp(min=0)
    if symmetric:
        xmax = torch.maximum(xmin.abs(), xmax)
        xmin = -xmax
    empty = xmin == xmax
    xmin = torch.where(empty, -torch.ones_like(xmin), xmin)
    xmax = torch.where(empty, torch.ones_like(xmax), xmax)
    scale = (xmax - xmin) / top
    if symmetric:
        zero = torch.full_like(scale, (top + 1) / 2)
    else:
        zero = -xmin / scale
        zero = torch.round(zero) if round_zero else zero
    return scale, zero


def quantize_codes(w: Tensor, scale: Tensor, zero: Tensor, bits: int, *, zero_inside: bool = False) -> Tensor:
    """Integer codes (as floats) of ``w`` on the grid; ``scale``/``zero`` broadcast against ``w``.

    GPTQ rounds ``w / scale`` and adds the integer zero; SpQR (unrounded zero) rounds ``w / scale + zero``
    (``zero_inside=True``). The two differ only in how exact halves round.
    """
    if zero_inside:
        return torch.clamp(torch.round(w / scale + zero), 0, maxq(bits))
    return torch.clamp(torch.round(w / scale) + zero, 0, maxq(bits))


def dequantize(codes: Tensor, scale: Tensor, zero: Tensor) -> Tensor:
    """``(code - zero) * scale``: the same expression, in the same order, as ``QuantizedWeight.dequantize``."""
    return (codes - zero) * scale


def effective_group(spec: QuantSpec, in_features: int) -> int:
    """The group size actually used: ``spec.group``; per-row (0) means ``in_features``; SpQR defaults to 16."""
    if spec.group:
        return spec.group
    return SPQR_DEFAULT_GROUP if spec.method == "spqr" else in_features


def check_quant_shape(in_features: int, spec: QuantSpec, name: str = "", out_features: int | None = None) -> None:
    """Refuse, before calibration, a group size the layer cannot hold (one line naming the layer and the fix).

    With ``out_features``, SpQR's own settings (``spec.options``: second-level group and bits, threshold,
    dampening, a symmetric grid) are checked too, as the quantizer will read them."""
    where = f"{name}: " if name else ""
    if not 2 <= spec.bits <= 8:
        raise UserInputError(f"{where}--quant {spec}: bits must be between 2 and 8")
    group = effective_group(spec, in_features)
    if group < 1:
        raise UserInputError(f"{where}--quant {spec}: group size must be at least 1 (e.g. w4g128)")
    if group > in_features:
        raise UserInputError(f"{where}group size {group} of --quant {spec} is larger than the input dimension "
                             f"{in_features}; choose a smaller group or exclude the layer with --ignore")
    if spec.method == "spqr" and group < 2:
        raise UserInputError(f"{where}--quant {spec}: SpQR needs groups of at least 2 weights (its outlier test "
                             f"leaves one out; the paper uses 16)")
    if spec.method == "spqr" and in_features % group:
        raise UserInputError(f"{where}input dimension {in_features} is not divisible by the SpQR group size {group} of "
                             f"--quant {spec}; choose a group that divides it or exclude the layer with --ignore")
    if spec.method == "spqr" and out_features is not None:
        from .spqr import check_settings

        check_settings(spec, out_features, name)


def stored_scale(scale: Tensor, dtype: torch.dtype | None) -> Tensor:
    """``scale`` as a checkpoint will hold it (``dtype``: the 16-bit storage of the packed formats and the export;
    None keeps it exact), back in float32, kept positive (a float16 underflow becomes its smallest subnormal).
    Quantizers round a grid's scale before choosing codes on it, so the codes, the error GPTQ compensates, the report
    and every saved format all describe one and the same weight."""
    if dtype is None:
        return scale
    smallest = 2.0**-24 if dtype == torch.float16 else torch.finfo(dtype).tiny
    return scale.to(dtype).to(scale.dtype).clamp_min(smallest)


def group_params(W: Tensor, bits: int, group: int, symmetric: bool) -> tuple[Tensor, Tensor]:
    """Per-group ``scale, zero [rows, ceil(in/group)]`` of ``W [rows, in]`` (GPTQ grid), e.g. for round-to-nearest."""
    params = [find_params(W[:, start : start + group], bits, symmetric) for start in range(0, W.shape[1], group)]
    return torch.stack([p[0] for p in params], dim=1), torch.stack([p[1] for p in params], dim=1)


def expand(stat: Tensor, group: int, cols: int) -> Tensor:
    """Per-group ``[rows, G]`` statistics repeated to per-column ``[rows, cols]`` (the last group may be shorter)."""
    return stat.repeat_interleave(group, dim=1)[:, :cols]
