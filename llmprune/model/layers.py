"""Architecture-generic access to a causal LM's decoder layers and their Linear layers.

No per-model tables: the decoder blocks are found as the ``nn.ModuleList`` whose length equals the config's layer
count (``num_hidden_layers`` / ``n_layer`` / ``num_layers``) and whose blocks hold Linear layers; the Linears are every
``nn.Linear`` and transformers' GPT-2 ``Conv1D`` inside a block. Embeddings and ``lm_head`` sit outside the decoder
layers and are never returned here.

Weights are always exchanged as ``[out_features, in_features]``: ``Conv1D`` stores ``[in, out]`` (it computes
``x @ W + b``), so ``get_weight`` / ``set_weight_`` transpose it.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import UnsupportedArchitecture, UserInputError

_LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")


def _conv1d_class():
    from transformers.pytorch_utils import Conv1D

    return Conv1D


def is_linear(module: nn.Module) -> bool:
    """True for ``nn.Linear`` and GPT-2's ``Conv1D`` (a Linear with its weight stored transposed)."""
    return isinstance(module, (nn.Linear, _conv1d_class()))


def _layer_count(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    config = getattr(config, "get_text_config", lambda: config)() if config is not None else None
    for key in _LAYER_COUNT_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _has_linear(block: nn.Module) -> bool:
    """Linears, or packed ones: a block stays a decoder block after ``compress_(pack=...)`` packed it."""
    from ..packed_linear import PackedLinear

    return any(is_linear(m) or isinstance(m, PackedLinear) for m in block.modules())


def _candidates(model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    """ModuleLists of same-class blocks that each contain at least one Linear (decoder stacks, MoE expert lists...)."""
    found = []
    for path, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(block) for block in module}) == 1 and all(_has_linear(block) for block in module):
            found.append((path, module))
    return found


def decoder_layers(model: nn.Module) -> tuple[nn.ModuleList, str]:
    """Return the ModuleList of decoder blocks and its qualified name (e.g. ``model.layers``, ``transformer.h``).

    Among ModuleLists of same-class blocks holding Linears, prefer those whose length equals the config's layer count,
    then the longest, then the outermost (shortest path): a stack of blocks always contains any per-block lists.
    """
    candidates = _candidates(model)
    count = _layer_count(model)
    if count is not None:
        matching = [(path, mods) for path, mods in candidates if len(mods) == count]
        candidates = matching or candidates
    if not candidates:
        raise UnsupportedArchitecture(
            f"no decoder layers found in {type(model).__name__}: expected an nn.ModuleList of blocks holding "
            f"nn.Linear/Conv1D layers (a Hugging Face causal LM such as Llama, Qwen2, Gemma, OPT, GPT-2, Phi-3)"
        )
    path, layers = max(candidates, key=lambda item: (len(item[1]), -item[0].count(".")))
    return layers, path


def linears(layer: nn.Module) -> dict[str, nn.Module]:
    """The Linear layers of one block, by name relative to the block, in module order (``self_attn.q_proj``...)."""
    found = {name: module for name, module in layer.named_modules() if name and is_linear(module)}
    if not found:
        raise UnsupportedArchitecture(
            f"no nn.Linear or Conv1D layer found in {type(layer).__name__}; this architecture is not supported"
        )
    return found


def other_weights(layer: nn.Module) -> dict[str, str]:
    """Weight matrices of a block that no Linear holds (MoE routers, hybrid models' depthwise conv kernels), by name
    relative to the block (``mlp.gate.weight``) -> the owning module's name. Nothing compresses them; the report
    lists them so that a run never leaves weights dense without saying so."""
    return {f"{name}.{key}" if name else key: name for name, module in layer.named_modules() if not is_linear(module)
            for key, param in module.named_parameters(recurse=False) if param.ndim >= 2}


def get_weight(module: nn.Module) -> Tensor:
    """The weight as ``[out_features, in_features]`` (a view: Conv1D's ``[in, out]`` storage is transposed)."""
    if isinstance(module, nn.Linear):
        return module.weight.data
    if isinstance(module, _conv1d_class()):
        return module.weight.data.t()
    raise UnsupportedArchitecture(f"{type(module).__name__} is not an nn.Linear or Conv1D layer")


@torch.no_grad()
def set_weight_(module: nn.Module, weight: Tensor) -> None:
    """Give the module ``weight`` ``[out_features, in_features]``, in the module's dtype and device.

    The parameter object stays (weights tied through one shared Parameter stay tied), but its storage is replaced,
    not written: a checkpoint's weights are mmapped from its safetensors file, and writing into them would copy those
    pages for good (a private mapping frees nothing until every tensor of the file is gone). Replaced, the file's
    pages stay clean and reclaimable, and a layer packed afterwards (``compress_(pack=...)``) frees its dense weight.
    """
    target = get_weight(module)
    if tuple(weight.shape) != tuple(target.shape):
        raise ValueError(f"new weight has shape {tuple(weight.shape)}, the module expects {tuple(target.shape)}")
    if isinstance(module, nn.Linear):
        module.weight.data = weight.to(device=target.device, dtype=target.dtype, copy=True)
    else:  # Conv1D stores [in, out]
        module.weight.data = weight.t().to(device=target.device, dtype=target.dtype).contiguous()


def in_features(module: nn.Module) -> int:
    return get_weight(module).shape[1]


def context_length(model) -> int | None:
    """The model's context length (``max_position_embeddings``, or GPT-2's ``n_positions``), if its config says;
    ``model`` may also be the config itself (windows are checked before any weights load), or None when no config
    could be read yet (then nothing is known, and ``check_seqlen`` passes)."""
    config = getattr(model, "config", model)
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    return int(limit) if limit else None


def check_seqlen(model, seqlen: int, flag: str) -> None:
    """Windows longer than the model's context are out of its training range (and an index error for learned
    absolute positions, GPT-2's and OPT's): one line instead."""
    limit = context_length(model)
    if limit is not None and seqlen > limit:
        raise UserInputError(f"{flag} {seqlen}: the model takes at most {limit} positions; give {flag} {limit} or "
                             f"less")
