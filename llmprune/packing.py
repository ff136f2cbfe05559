"""Turn a compression Report into the per-layer packed tensors ``checkpoint.save`` writes.

Quantized layers are packed from their ``QuantizedWeight`` (codes, scales, zeros kept as data: no second
quantization); pruned-only layers from their dense weight. ``--format dense`` packs nothing: the folder is a plain
Hugging Face checkpoint.
"""
from __future__ import annotations

import torch

from .errors import UserInputError
from .model.layers import get_weight


def storage_dtype(model) -> str:
    """Packed values and scales are 16-bit: bfloat16 for a bfloat16 model, float16 otherwise (also the dtype the
    quantizers round their scales to while compressing, ``compress.build_plan``)."""
    return "bfloat16" if next(model.parameters()).dtype == torch.bfloat16 else "float16"


def pack_layers(model, report, fmt: str) -> dict | None:
    """``{name: (format, packed tensors, params)}`` for every compressed Linear not yet packed, or None for ``dense``.
    Layers ``compress_(pack=fmt)`` already packed are ``PackedLinear`` modules, which the checkpoint writes as they
    are."""
    if fmt == "dense":
        return None
    from .packed_linear import PackedLinear

    dtype = storage_dtype(model)
    layers = {}
    for name in report.records:
        module = model.get_submodule(name)
        if isinstance(module, PackedLinear):
            if module.format != fmt:
                raise UserInputError(f"{name} was packed as {module.format} while compressing; save it with "
                                     f"format={module.format!r}, or compress with pack={fmt!r}")
            continue
        packed = packed_compressed(name, module, report, fmt, dtype)
        layers[name] = (fmt, packed.packed(), packed.params)
    return layers


def packed_compressed(name: str, module, report, fmt: str, dtype: str):
    """The compressed Linear ``name`` as a ``PackedLinear`` of ``fmt``: from its codes in ``report.quantized`` when it
    was quantized (no second quantization), else from its pruned weight."""
    from .packed_linear import packed_module

    source = report.quantized.get(name)
    return packed_module(name, fmt, get_weight(module).detach() if source is None else source,
                         bias=getattr(module, "bias", None), dtype=dtype)
