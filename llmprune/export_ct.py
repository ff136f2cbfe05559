"""``--export compressed-tensors``: int4 ``pack-quantized`` checkpoints that vLLM's W4A16 path and transformers'
compressed-tensors loader read, written through the compressed-tensors library's own config schema and compressor.

Why through the library: the config schema (``quantization_config`` in config.json) and the packing
(``weight_packed`` int32, ``weight_scale``, packed ``weight_zero_point``, ``weight_shape``) are defined by
compressed-tensors; re-implementing them would drift. The steps mirror llm-compressor's save path:
``apply_quantization_config`` attaches a scheme per layer group, we set ``weight`` to our dequantized weight and
``weight_scale`` / ``weight_zero_point`` to our statistics, ``ModelCompressor.compress_model`` packs, then
``save_pretrained`` + ``update_config``. Pruned + int4 models export the same way: pruned weights are codes equal to the
zero point (exact zeros), so they cost 4 bits each and run on the int4 kernels.

Code mapping: llmprune codes are unsigned (0..2**b-1, zero point z); compressed-tensors' are signed, so
``q_ct = code - 2**(b-1)`` and ``zp_ct = z - 2**(b-1)``; ``(q_ct - zp_ct) * scale`` is our ``(code - z) * scale``.
Symmetric layers (z = 2**(b-1)) store no zero point. compressed-tensors re-quantizes ``weight`` with our scale and
zero point; the codes it packs are checked against ours, so a mismatch is an error, never a silent change.

Deviation: the legacy ``sparse-24-bitmask`` format is not written (compressed-tensors >= 0.15 dropped it), and the
config's ``sparsity_config`` stays ``{}`` as the library's own ``update_config`` writes it ("sparsity is removed for
now"): a pruned pattern lives in the weights (zero codes) and in ``llmprune_export.json``'s recipe, and a server runs
the export as dense int4.
"""
from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import torch
from torch import nn

from .atomic import atomic_dir
from .errors import UserInputError, require
from .packed_linear import PackedLinear, unpack_linears_
from .types import QuantizedWeight


NEEDS_QUANT = "--export compressed-tensors needs quantized layers; add --quant (e.g. --quant w4g64)"


def check_plan(model: nn.Module, plan) -> None:
    """Before any calibration: the refusals ``_check`` would make after the compression, from the recipe alone."""
    from .model.layers import get_weight

    refuse_moe(model)
    quant = plan.recipe.quant
    if quant is None:
        raise UserInputError(NEEDS_QUANT)
    if quant.method == "spqr":
        raise UserInputError("--export compressed-tensors: SpQR's outliers and quantized statistics have no "
                             "compressed-tensors form; use --quantizer gptq or rtn, or drop --export")
    for name in plan.targets:
        module = model.get_submodule(name)
        _check_module(name, module)
        _check_group(name, quant.group, get_weight(module).shape[1], quant.bits)


def _check_module(name: str, module: nn.Module) -> None:
    if not isinstance(module, (nn.Linear, PackedLinear)):
        raise UserInputError(f"--export compressed-tensors: {name} is a {type(module).__name__}, not an nn.Linear "
                             f"(GPT-2 Conv1D layers cannot be exported); drop --export")


def _check_group(name: str, group: int, in_features: int, bits: int) -> None:
    if group and in_features % group:
        raise UserInputError(f"--export compressed-tensors: {name}: group {group} does not divide {in_features}; "
                             f"choose a dividing group (e.g. --quant w{bits}g64)")


def _check(name: str, qw: QuantizedWeight, module: nn.Module) -> None:
    _check_module(name, module)
    if qw.outliers is not None or not torch.equal(qw.zeros, qw.zeros.round()):
        raise UserInputError(f"--export compressed-tensors: {name} has SpQR outliers or non-integer zero points; "
                             f"export uniform quantization (--quant w4g64) or drop --export")
    _check_group(name, qw.group, qw.shape[1], qw.bits)


def _scheme_key(qw: QuantizedWeight) -> tuple:
    group = None if not qw.group or qw.group == qw.shape[1] else qw.group
    symmetric = bool(torch.all(qw.zeros == 1 << (qw.bits - 1)))
    return qw.bits, group, symmetric


def _config(schemes: dict[str, tuple]):
    """One compressed-tensors config group per (bits, group, symmetric), targeting the layers by name."""
    ct = require("compressed_tensors.quantization", "export")
    groups: dict[tuple, list[str]] = {}
    for name, key in schemes.items():
        groups.setdefault(key, []).append(name)
    config_groups = {}
    for i, ((bits, group, symmetric), names) in enumerate(sorted(groups.items(), key=str)):
        args = ct.QuantizationArgs(num_bits=bits, type="int", symmetric=symmetric,
                                   strategy="group" if group else "channel", group_size=group)
        config_groups[f"group_{i}"] = ct.QuantizationScheme(targets=names, weights=args)
    return ct.QuantizationConfig(config_groups=config_groups, quantization_status="frozen")


@torch.no_grad()
def _set_qparams_(module: nn.Linear, qw: QuantizedWeight) -> None:
    offset = 1 << (qw.bits - 1)
    scales = torch.where(qw.scales == 0, torch.ones_like(qw.scales), qw.scales)  # an all-zero group: any scale works
    module.weight.copy_(qw.dequantize().to(module.weight.dtype))
    module.weight_scale.copy_(scales.reshape(module.weight_scale.shape).to(module.weight_scale.dtype))
    if hasattr(module, "weight_zero_point"):
        module.weight_zero_point.copy_((qw.zeros - offset).reshape(module.weight_zero_point.shape))


def _verify_codes(module: nn.Module, qw: QuantizedWeight, name: str) -> None:
    """The codes compressed-tensors packed must be ours (signed offset); anything else is a bug."""
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32

    codes = unpack_from_int32(module.weight_packed, qw.bits, torch.Size(qw.shape)).to(torch.int16)
    cols = torch.arange(qw.shape[1]) // (qw.group or qw.shape[1])
    live = qw.scales[:, cols] != 0  # weights that dequantize to exact zeros come back as the zero point
    if qw.mask is not None:
        live &= qw.mask.bool()
    want = torch.where(live, qw.codes.to(torch.int16), qw.zeros[:, cols].to(torch.int16)) - (1 << (qw.bits - 1))
    if not torch.equal(codes, want):
        raise RuntimeError(f"compressed-tensors re-quantized {name} to different codes; export aborted")


TRANSFORMERS_CANNOT_LOAD = ("falcon", "gpt_bigcode")  # tests/test_export_ct.py's strict xfail tracks the fix


def refuse_moe(model: nn.Module) -> None:
    """transformers and vLLM read MoE experts of compressed-tensors checkpoints in per-model layouts (fused 3-D
    weights, or per-expert names that differ between models) that this export does not write."""
    from .model.experts import has_routed_experts

    if has_routed_experts(model):
        raise UserInputError("--export compressed-tensors: MoE experts cannot be exported in that format yet; drop "
                             "--export (the llmprune folder and --format dense hold the model)")


def export_compressed_tensors(model: nn.Module, report, out_dir, *, recipe=None, tokenizer=None,
                              force: bool = False) -> Path:
    """Write ``model`` with the ``QuantizedWeight``s of ``report.quantized`` (or a ``{name: qw}`` dict) as a
    compressed-tensors ``pack-quantized`` folder at ``out_dir`` (atomic). The model itself is not modified."""
    with atomic_dir(out_dir, force) as tmp:
        write_compressed_tensors(model, report, tmp, recipe=recipe, tokenizer=tokenizer)
    return Path(out_dir)


def write_compressed_tensors(model: nn.Module, report, directory: Path, *, recipe=None, tokenizer=None) -> None:
    """``export_compressed_tensors``' writing, into an existing empty (staged) folder."""
    require("compressed_tensors", "export")
    from compressed_tensors.compressors.model_compressors.model_compressor import ModelCompressor
    from compressed_tensors.quantization import apply_quantization_config

    refuse_moe(model)
    quantized = getattr(report, "quantized", report)  # read layer by layer: a Report's store holds them compact
    if not quantized:
        raise UserInputError(NEEDS_QUANT)
    schemes = {}
    for name, qw in quantized.items():
        _check(name, qw, model.get_submodule(name))
        schemes[name] = _scheme_key(qw)
    model = copy.deepcopy(model)
    unpack_linears_(model)  # export works on nn.Linear
    apply_quantization_config(model, _config(schemes), show_progress=False)
    for name, qw in quantized.items():
        _set_qparams_(model.get_submodule(name), qw)
    compressor = ModelCompressor.from_pretrained_model(model, "pack-quantized")
    compressor.compress_model(model)
    for name, qw in quantized.items():
        _verify_codes(model.get_submodule(name), qw, name)
    model.save_pretrained(directory)
    compressor.update_config(directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    _provenance(directory, schemes, recipe)
    model_type = getattr(model.config, "model_type", None)
    if model_type in TRANSFORMERS_CANNOT_LOAD:
        warnings.warn(f"transformers cannot load a compressed-tensors {model_type} checkpoint (its _init_weights "
                      f"reads the replaced .weight); serve the export with vLLM, or load the llmprune folder",
                      stacklevel=2)
    elif not all(key[2] for key in schemes.values()) and not transformers_loads_asymmetric():
        warnings.warn("transformers >= 5.23 cannot load an asymmetric compressed-tensors export (its loader expects "
                      "the zero points unpacked; vLLM and transformers 5.18-5.22 read them); quantize symmetrically "
                      "(e.g. --quant w4g64s) for an export both load, or load the llmprune folder", stacklevel=2)


def transformers_loads_asymmetric() -> bool:
    """Whether the installed transformers loads an asymmetric export: 5.18-5.22 do (checked, same logits); 5.23
    started building the zero point unpacked on meta and rejects the packed one (tests/test_export_ct.py's strict
    xfail tracks a fix, which would make this check wrong in the safe direction: a warning too many)."""
    import transformers
    from packaging.version import Version

    return Version(transformers.__version__).release < (5, 23)


RECORD = "llmprune_export.json"


def _provenance(directory: Path, schemes: dict[str, tuple], recipe) -> None:
    """``llmprune_export.json``: what was exported and by which versions (the weights' recipe, when given)."""
    import compressed_tensors

    layers = {name: dict(zip(("bits", "group", "symmetric"), key)) for name, key in schemes.items()}
    record = {"format": "pack-quantized", "compressed_tensors": compressed_tensors.__version__, "layers": layers,
              "recipe": recipe.to_dict() if hasattr(recipe, "to_dict") else recipe}
    (directory / RECORD).write_text(json.dumps(record, indent=1) + "\n")
