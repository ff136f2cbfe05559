"""Round-to-nearest: each weight to the nearest point of its group's min-max grid, no error compensation."""
from __future__ import annotations

import torch
from torch import Tensor

from ..recipe import QuantSpec
from ..types import QuantizedWeight, Stats
from . import QUANTIZERS
from .bits_per_param import bits_per_param
from .uniform import (check_quant_shape, dequantize, effective_group, expand, group_params, quantize_codes,
                      stored_scale)


@QUANTIZERS.register("rtn", needs=frozenset())
def rtn(weight: Tensor, stats: Stats | None, spec: QuantSpec, *, mask: Tensor | None = None,
        scale_dtype: torch.dtype | None = None, name: str = "") -> tuple[QuantizedWeight, dict]:
    """RTN baseline (as in GPTQ's Table 1): grid from the group's min and max, codes by rounding.

    With a keep-``mask`` the grid is fitted to the kept weights and the pruned ones (zeros in the fit) take the zero
    point, so they dequantize to exactly 0. ``stats`` is not used (no calibration is needed). ``scale_dtype``: see
    ``uniform.stored_scale``.
    """
    rows, cols = weight.shape
    check_quant_shape(cols, spec, name)
    group = effective_group(spec, cols)
    W = weight.float() if mask is None else weight.float() * mask
    scales, zeros = group_params(W, spec.bits, group, spec.symmetric)
    scales = stored_scale(scales, scale_dtype)
    s, z = expand(scales, group, cols), expand(zeros, group, cols)
    codes = quantize_codes(W, s, z, spec.bits)
    if mask is not None:
        codes = torch.where(mask, codes, z)
    qw = QuantizedWeight(codes.to(torch.uint8), scales, zeros, spec.bits, group, spec.symmetric,
                         mask=None if mask is None else mask.clone())
    err = float(((dequantize(codes, s, z) - W) ** 2).sum())
    return qw, {"quant_sq_error": err, "bits_per_param": bits_per_param(qw)}
