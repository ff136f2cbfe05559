"""``PackedLinear``: a Linear whose weight lives only as packed tensors; its forward goes through ``dispatch``.

Why: a "compressed" module that decompresses on first use and keeps the dense weight saves nothing. Here the packed
tensors are the module's buffers (so ``state_dict`` holds exactly what the checkpoint stores, named
``<module>.<tensor>``), the dense weight only ever exists transiently inside the reference matmul, and the same
module runs the Triton kernels on CUDA. It replaces ``nn.Linear`` and GPT-2's ``Conv1D`` alike (both compute
``x @ W.T + b`` for the ``[out, in]`` weight); ``dense_kind`` remembers which, so that unpacking gives back the layer
(and weight layout) the architecture's checkpoints hold.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from . import dispatch
from .errors import UserInputError
from .formats import dtype_name, get_format, needs_quant
from .types import Pruned, QuantizedWeight


class PackedLinear(nn.Module):
    """Packed weight buffers (names from the format's ``tensor_specs``) + optional bias; no dense weight."""

    dense_kind = "linear"  # "conv1d" where it took a Conv1D's place (``set_module_``): unpacking restores that

    def __init__(self, in_features: int, out_features: int, format: str, params: dict, *, bias: bool = False,
                 device=None, bias_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.in_features, self.out_features, self.format, self.params = in_features, out_features, format, dict(params)
        self.kernel_path, self.kernel_reason = "unused", "no forward yet"
        self.kernel_options: dict = {}  # keyword options of the kernel's prepare (dispatch.use_semi_structured)
        for name, spec in get_format(format).tensor_specs(out_features, in_features, **params).items():
            self.register_buffer(name, torch.empty(spec.shape, dtype=spec.dtype, device=device))
        self.bias = nn.Parameter(torch.empty(out_features, dtype=bias_dtype, device=device),
                                 requires_grad=False) if bias else None
        dispatch.register(self)

    def __getstate__(self):  # deepcopy, pickle: the kernel launch is rebuilt for the copy's own tensors
        state = super().__getstate__()
        state.pop(dispatch.PLAN, None)
        return state

    def __setstate__(self, state):  # copies skip __init__: compiled graphs must find them too
        super().__setstate__(state)
        self.__dict__.setdefault("kernel_options", {})  # modules pickled before the attribute existed
        dispatch.register(self)

    @classmethod
    def from_packed(cls, packed: dict[str, Tensor], format: str, in_features: int, bias: Tensor | None = None):
        """Wrap tensors made by ``FORMATS[format].pack`` (shapes checked against the format's specs)."""
        fmt = get_format(format)
        out_features = next(iter(packed.values())).shape[0] if format != "spqr" else packed["scale_codes"].shape[0]
        module = cls(in_features, out_features, format, fmt.params(packed, in_features), bias=bias is not None,
                     device="meta")
        for name, spec in fmt.tensor_specs(out_features, in_features, **module.params).items():
            tensor = packed[name]
            if tuple(tensor.shape) != spec.shape or tensor.dtype != spec.dtype:
                raise ValueError(f"{format} tensor {name}: {tuple(tensor.shape)} {tensor.dtype}, expected {spec}")
            setattr(module, name, tensor)
        if bias is not None:
            module.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
        return module

    @classmethod
    def from_quantized(cls, qw: QuantizedWeight, format: str, *, bias: Tensor | None = None,
                       dtype: str = "float16", name: str = "layer"):
        """Pack a ``QuantizedWeight`` (scales/values stored in ``dtype``); errors name the layer."""
        fmt = get_format(format)
        try:
            packed = fmt.pack(qw, dtype=dtype)
        except UserInputError as exc:
            raise UserInputError(f"{name}: {exc}") from None
        return cls.from_packed(packed, format, qw.shape[1], bias)

    @classmethod
    def from_dense(cls, weight: Tensor | Pruned, format: str = "dense", *, bias: Tensor | None = None,
                   dtype: str | None = None, name: str = "layer"):
        """Pack a dense or pruned weight ``[out, in]`` (formats that store unquantized values: dense, sparse24)."""
        fmt = get_format(format)
        if fmt.quantized:
            raise needs_quant(format, name)
        try:
            packed = fmt.pack(weight, dtype=dtype)
        except UserInputError as exc:
            raise UserInputError(f"{name}: {exc}") from None
        source = weight.weight if isinstance(weight, Pruned) else weight
        return cls.from_packed(packed, format, source.shape[1], bias)

    def packed(self) -> dict[str, Tensor]:
        """The packed tensors by format name (the buffers themselves, no copy)."""
        return {name: buf for name, buf in self.named_buffers(recurse=False)}

    def dequantize(self) -> Tensor:
        """The dense weight ``[out, in]`` (float32 for quantized formats), for tests and export only."""
        return get_format(self.format).unpack(self.packed(), self.in_features)

    def forward(self, x: Tensor) -> Tensor:
        return dispatch.matmul(x, self)

    def _apply(self, fn, recurse=True):
        """``.to``, ``.cuda``, ``.half`` ... replace the buffers: drop the kernel launch built for the old ones
        (``dispatch._plan``), which would keep them alive until the next forward. A dtype cast converts the packed
        floating tensors (scales, 16-bit values) as it would a dense weight (``.to(torch.bfloat16)`` rounds float16
        scales to bfloat16); ``params`` then follow the tensors, so a save writes what a load expects."""
        dispatch.drop_plan(self)
        result = super()._apply(fn, recurse)
        packed = self.packed()
        if not any(t.is_meta for t in packed.values()):
            self.params = dict(get_format(self.format).params(packed, self.in_features))
        elif "dtype" in self.params:  # meta tensors hold no values (spqr's code widths): only the dtype can change
            floats = [t.dtype for t in packed.values() if t.is_floating_point()]
            self.params = {**self.params, "dtype": dtype_name(floats[0])} if floats else self.params
        return result

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, format={self.format}, "
                f"params={self.params}, bias={self.bias is not None}, path={self.kernel_path}")


def packed_bytes(module: nn.Module) -> int:
    """Bytes held by the packed buffers and biases of every ``PackedLinear`` in ``module``."""
    total = 0
    for m in module.modules():
        if isinstance(m, PackedLinear):
            total += sum(t.numel() * t.element_size() for t in m.packed().values())
            total += 0 if m.bias is None else m.bias.numel() * m.bias.element_size()
    return total


def unpack_linears_(model: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """Replace every ``PackedLinear`` in ``model`` by the dense layer it stands for (``nn.Linear``, or GPT-2's
    ``Conv1D`` where it took one's place, so that ``save_pretrained`` writes the layout the architecture loads), holding
    its exact dense weight on the packed tensors' device: the dense twin that exports and speed baselines compare with.
    ``dtype`` None: the dtype the model computes in (``compute_dtype``), not ``config.dtype``, which
    ``model.to(dtype)`` and ``llmprune.load(dtype=...)`` leave as it was. Returns ``model``."""
    dtype = dtype or compute_dtype(model)
    for name, module in list(model.named_modules()):
        if isinstance(module, PackedLinear):
            set_module_(model, name, _dense_twin(module, dtype))
    _forget_packing_(model)
    return model


def compute_dtype(model: nn.Module) -> torch.dtype | None:
    """The dtype of most of the model's dense floating parameters (embeddings, norms, unpacked layers): its
    activations', so the one its packed layers compute in. None when the model has no dense floating parameter."""
    packed = {id(p) for m in model.modules() if isinstance(m, PackedLinear) for p in m.parameters()}
    elements: dict[torch.dtype, int] = {}
    for param in model.parameters():
        if param.is_floating_point() and id(param) not in packed:
            elements[param.dtype] = elements.get(param.dtype, 0) + param.numel()
    return max(elements, key=elements.get) if elements else None


def _dense_twin(module: PackedLinear, dtype: torch.dtype | None) -> nn.Module:
    """The ``nn.Linear`` or ``Conv1D`` computing what ``module`` computes, in ``dtype`` (None: the bias's dtype,
    float32 without one)."""
    dtype = dtype or (module.bias.dtype if module.bias is not None else torch.float32)
    weight = module.dequantize().to(dtype)
    bias = None if module.bias is None else module.bias.detach().to(device=weight.device, dtype=dtype, copy=True)
    if module.dense_kind == "conv1d":
        from transformers.pytorch_utils import Conv1D

        with torch.device("meta"):
            twin = Conv1D(module.out_features, module.in_features)
        twin.weight = nn.Parameter(weight.t().contiguous())  # Conv1D stores [in, out]
        twin.bias = nn.Parameter(torch.zeros_like(weight[:, 0]) if bias is None else bias)  # Conv1D always has one
        return twin
    twin = nn.Linear(module.in_features, module.out_features, bias=bias is not None, device="meta")
    twin.weight = nn.Parameter(weight.contiguous())
    if bias is not None:
        twin.bias = nn.Parameter(bias)
    return twin


def _forget_packing_(model: nn.Module) -> None:
    """No packed layer is left: drop llmprune's quantization marker (``config.quantization_config``, transformers'
    ``hf_quantizer``), so that a save writes a plain folder rather than one whose config.json promises packed
    layers."""
    from .manifest import is_ours

    if not is_ours(getattr(getattr(model, "config", None), "quantization_config", None)):
        return
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    elif hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def set_module_(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule at qualified ``name`` (e.g. ``model.layers.0.mlp.up_proj``) with ``module``. A
    ``PackedLinear`` taking a ``Conv1D``'s place (or a packed one's) notes what it replaces in ``dense_kind``: every
    loader and packer swaps through here, and only here is the replaced module known."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if isinstance(module, PackedLinear):
        module.dense_kind = _dense_kind(getattr(parent, child, None))
    setattr(parent, child, module)


def _dense_kind(module: nn.Module | None) -> str:
    from transformers.pytorch_utils import Conv1D

    if isinstance(module, PackedLinear):
        return module.dense_kind
    return "conv1d" if isinstance(module, Conv1D) else "linear"


def packed_module(name: str, format: str, source, *, bias: Tensor | None = None,
                  dtype: str = "float16") -> PackedLinear:
    """A ``PackedLinear`` from a ``QuantizedWeight``, a ``Pruned`` or a dense weight; errors name the layer (e.g.
    ``--format int4`` without ``--quant``)."""
    if isinstance(source, QuantizedWeight):
        return PackedLinear.from_quantized(source, format, bias=bias, dtype=dtype, name=name)
    if get_format(format).quantized:
        raise needs_quant(format, name)
    return PackedLinear.from_dense(source, format, bias=bias, dtype=dtype, name=name)


def pack_layer(name: str, format: str, source, *, bias: Tensor | None = None,
               dtype: str = "float16") -> tuple[str, dict[str, Tensor], dict]:
    """``(format, packed tensors, params)`` for ``checkpoint.save(layers=...)``: ``packed_module``'s tensors."""
    module = packed_module(name, format, source, bias=bias, dtype=dtype)
    return format, module.packed(), module.params
