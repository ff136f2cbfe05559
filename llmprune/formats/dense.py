"""``dense``: the weight as a plain 16/32-bit matrix (pruned zeros stored as zeros).

Tensors:
    weight: [out, in], float16/bfloat16/float32 — the weight, row-major (nn.Linear's layout).

Worked example (4 elements, float16): row ``[0.5, 0, -1.25, 0]`` is stored as the four halves
``0x3800 0x0000 0xBD00 0x0000``; nothing is packed. ``--format dense`` checkpoints are plain Hugging Face folders.
"""
from __future__ import annotations

from torch import Tensor

from . import FORMATS, Format, Spec, dtype_name, float_dtype
from ..types import Pruned, QuantizedWeight
from ._quant import linear_ref


def tensor_specs(out_features: int, in_features: int, dtype: str = "float16") -> dict[str, Spec]:
    return {"weight": Spec((out_features, in_features), float_dtype(dtype))}


def check(out_features: int, in_features: int, dtype: str = "float16") -> None:
    float_dtype(dtype)


def pack(source, dtype: str | None = None) -> dict[str, Tensor]:
    """A dense ``Tensor [out, in]``, a ``Pruned`` or a ``QuantizedWeight`` (dequantized) -> ``{"weight"}``."""
    if isinstance(source, QuantizedWeight):
        weight = source.dequantize()
    elif isinstance(source, Pruned):
        weight = source.weight
    else:
        weight = source
    target = float_dtype(dtype) if dtype is not None else weight.dtype
    return {"weight": weight.detach().to(float_dtype(target)).contiguous()}


def unpack(packed: dict[str, Tensor], in_features: int | None = None) -> Tensor:
    return packed["weight"]


def matmul_ref(x: Tensor, packed: dict[str, Tensor]) -> Tensor:
    return linear_ref(x, packed["weight"])


def params(packed: dict[str, Tensor], in_features: int) -> dict:
    return {"dtype": dtype_name(packed["weight"].dtype)}


FORMAT = FORMATS.add("dense", Format("dense", tensor_specs, pack, unpack, matmul_ref, check, params, kernel=None,
                                     quantized=False))
