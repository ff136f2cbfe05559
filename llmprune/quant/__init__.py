"""Weight quantizers: one file each, registered in ``QUANTIZERS`` with the statistics they need.

A quantizer is ``fn(weight[out, in] float32, stats: Stats, spec: QuantSpec, *, mask=None, damp, block, name)
-> (QuantizedWeight, info: dict)``. It keeps codes, scales, zeros (and SpQR's outliers and bilevel statistics) as
data, so packing never quantizes a second time. Adding a quantizer = one file + one import line below.
"""
from ..registry import Registry

QUANTIZERS = Registry("quantizer")

from . import rtn, gptq, spqr  # noqa: E402,F401  (registration)
