"""Pack every Linear of a tiny model in a given format (test-side glue standing in for the compressor)."""
from __future__ import annotations

import torch

from llmprune.model.layers import decoder_layers, get_weight, linears, set_weight_
from llmprune.packed_linear import PackedLinear, set_module_
from tests.formats_fixtures import mask_24, mask_groups, rtn, spqr_like

GROUP = 16


def quantize_for(fmt: str, weight: torch.Tensor):
    """The QuantizedWeight / dense source that ``fmt`` stores for ``weight``."""
    if fmt == "dense":
        return weight
    if fmt == "sparse24":
        return weight * mask_24(weight)
    if fmt == "int4":
        return rtn(weight, GROUP)
    if fmt == "sparse24_int4":
        return rtn(weight, GROUP, symmetric=True, mask=mask_24(weight))
    if fmt == "group_sparse_int4":
        return rtn(weight, GROUP, mask=mask_groups(weight, GROUP))
    if fmt == "spqr":
        return spqr_like(weight, GROUP, 16)
    raise ValueError(fmt)


def pack_model_(model: torch.nn.Module, fmt: str, dtype: str = "float32") -> dict:
    """Set every decoder Linear's weight to what ``fmt`` stores, replace it by a PackedLinear; returns the
    ``layers`` mapping ``checkpoint.save`` takes: ``{name: (format, packed tensors, params)}``."""
    layers_out = {}
    blocks, path = decoder_layers(model)
    for i, block in enumerate(blocks):
        for rel, lin in linears(block).items():
            name = f"{path}.{i}.{rel}"
            source = quantize_for(fmt, get_weight(lin).float())
            dense = source.dequantize() if hasattr(source, "dequantize") else source
            bias = None if lin.bias is None else lin.bias.detach().clone()
            if isinstance(source, torch.Tensor):
                packed_mod = PackedLinear.from_dense(source, fmt, bias=bias, dtype=dtype, name=name)
            else:
                packed_mod = PackedLinear.from_quantized(source, fmt, bias=bias, dtype=dtype, name=name)
            set_weight_(lin, dense)
            layers_out[name] = (fmt, packed_mod.packed(), packed_mod.params)
    return layers_out


def swap_in_(model: torch.nn.Module, layers: dict) -> None:
    """Replace the named Linears by PackedLinears built from ``layers``."""
    for name, (fmt, packed, _) in layers.items():
        lin = model.get_submodule(name)
        bias = None if getattr(lin, "bias", None) is None else lin.bias.detach().clone()
        set_module_(model, name, PackedLinear.from_packed(packed, fmt, get_weight(lin).shape[1], bias))
