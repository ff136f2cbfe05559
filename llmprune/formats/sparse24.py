"""``sparse24``: 2:4 semi-structured sparsity with 16-bit values (half of the weights) + 2-bit positions.

Tensors (in % 8 == 0):
    values: [out, in/2], float16/bfloat16 (float32 allowed; reference path only) — the 2 kept values of every group
            of 4 input columns, in column order.
    meta:   [out, in/8], uint8 — for group k (columns 4k..4k+3) the kept positions p0 < p1 (0..3) form the nibble
            ``p0 | p1 << 2``; byte j holds group 2j in its low nibble and group 2j+1 in its high nibble.
This is the compressed layout of NVIDIA's sparse tensor cores (Mishra et al. 2021, arXiv:2104.08378), kept
row-major; on CUDA ``torch.sparse.to_sparse_semi_structured`` can be built from ``unpack``'s dense weight.

Worked example (one row, 8 columns): ``[0, 1.5, 0, -2, | 3, 0, 0, 0]`` keeps positions (1, 3) in group 0 and (0, 1)
in group 1 (position 1 filled with an exact zero): ``values = [1.5, -2, 3, 0]``, nibbles ``1 | 3<<2 = 0xD`` and
``0 | 1<<2 = 0x4``, so ``meta = [0x4D]``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import FORMATS, Format, Spec, dtype_name, float_dtype
from ..types import Pruned, QuantizedWeight
from ._nm import check_24, pack_meta, positions, scatter_dense
from ._quant import linear_ref


def tensor_specs(out_features: int, in_features: int, dtype: str = "float16") -> dict[str, Spec]:
    return {"values": Spec((out_features, in_features // 2), float_dtype(dtype)),
            "meta": Spec((out_features, in_features // 8), torch.uint8)}


def check(out_features: int, in_features: int, dtype: str = "float16") -> None:
    check_24("sparse24", out_features, in_features)
    float_dtype(dtype)


def _weight(source) -> Tensor:
    """The dense weight; only its non-zeros need storing (a kept weight that is exactly 0 needs no slot)."""
    if isinstance(source, QuantizedWeight):
        return source.dequantize()
    return source.weight if isinstance(source, Pruned) else source


def pack(source, dtype: str | None = None) -> dict[str, Tensor]:
    """A 2:4-sparse ``Tensor [out, in]`` / ``Pruned`` / ``QuantizedWeight`` -> ``{"values", "meta"}``."""
    weight = _weight(source)
    out_features, in_features = weight.shape
    target = float_dtype(dtype if dtype is not None else weight.dtype)
    check(out_features, in_features, dtype_name(target))
    pos = positions(weight != 0, "sparse24")
    cols = (pos + 4 * torch.arange(in_features // 4, device=pos.device).unsqueeze(-1)).reshape(out_features, -1)
    values = weight.detach().gather(1, cols).to(target)
    return {"values": values.contiguous(), "meta": pack_meta(pos).contiguous()}


def unpack(packed: dict[str, Tensor], in_features: int | None = None) -> Tensor:
    """The exact dense weight ``[out, in]`` in the values' dtype (zeros where nothing is stored)."""
    return scatter_dense(packed["values"], packed["meta"])


def matmul_ref(x: Tensor, packed: dict[str, Tensor]) -> Tensor:
    return linear_ref(x, unpack(packed))


def params(packed: dict[str, Tensor], in_features: int) -> dict:
    return {"dtype": dtype_name(packed["values"].dtype)}


FORMAT = FORMATS.add("sparse24", Format("sparse24", tensor_specs, pack, unpack, matmul_ref, check, params,
                                        kernel="sparse24", quantized=False))
