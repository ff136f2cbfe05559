"""Merged projections: sibling Linears that read the same input (q/k/v, gate/up) run as one matmul at inference.

Why: a decode step calls every Linear once per token, and at batch 1 each kernel runs for microseconds, so the host
work of each call and each launch (tens of microseconds, ``benchmarks/host_overhead.py``) sets the speed of eager
decoding; merging a Llama block's seven Linears into four cuts that by three sevenths. One launch over all output rows
also fills a large GPU better than a small launch each: Llama-3-8B's k and v projections have 1024 rows, 64 programs
at 16-row decode tiles for 132 SMs unless K is split. Serving engines merge them the same way (vLLM's QKV and gate/up
layers); there the model code calls the merged layer, here transformers' attention and MLP code still call ``q_proj``,
``k_proj`` and ``v_proj`` one by one, so each becomes a ``ProjectionSlice`` of one shared result: the first slice
called with an input computes the merged layer, its siblings called with the same tensor (same object, unchanged
since) take their columns of that output, and the result is let go once every slice has taken its part. A slice called
with another input computes the merged layer again (correct, not faster). ``torch.compile`` traces the same logic
(Dynamo tracks the shared object's attributes; the compiled graph has one matmul per merged layer, tested), without
the version check, which it cannot trace (no supported model writes a projection's input between its siblings' calls).

The merged layer is a ``PackedLinear`` of the stacked packed weight (``formats.stack_rows``) or an ``nn.Linear`` of the
stacked dense weight (dense models merge the same way, for a like-for-like comparison), registered on the parent
module under the joined names (``self_attn.q_proj_k_proj_v_proj``). It is an inference-time transform: models are
compressed and saved unmerged (``compress_`` and ``checkpoint.save`` refuse a merged one).
"""
from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from .errors import UserInputError
from .formats import stack_rows
from .packed_linear import PackedLinear
from .tensor_state import version

GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))  # Llama, Mistral, Qwen2, Gemma, OPT (q/k/v)


class SharedResult:
    """The merged layer's output for the last input, until every slice has taken its columns."""

    def __init__(self, linear: nn.Module, sizes: list[int]):
        self.linear, self.sizes = linear, sizes  # the merged layer, and each slice's number of output columns
        self.input: Tensor | None = None
        self.input_version = 0
        self.parts: tuple[Tensor, ...] = ()
        self.taken: set[int] = set()

    def part(self, x: Tensor, index: int) -> Tensor:
        """Columns ``index`` of the merged output for ``x``: computed when ``x`` is not the input held, or was written
        since, or this slice took its part already (the caller may have written into it)."""
        stamp = 0 if torch.compiler.is_compiling() else version(x)
        if self.input is not x or self.input_version != stamp or index in self.taken:
            self.input, self.input_version, self.taken = x, stamp, set()
            self.parts = self.linear(x).split_with_sizes(self.sizes, -1)  # Tensor.split: ~5 us more Python
        part = self.parts[index]
        self.taken.add(index)
        if len(self.taken) == len(self.sizes):  # let go of the input and the output
            self.input, self.parts, self.taken = None, (), set()
        return part


class ProjectionSlice(nn.Module):
    """Output columns ``start:stop`` of a merged layer, in place of the Linear that computed them."""

    def __init__(self, shared: SharedResult, index: int, start: int, stop: int, in_features: int):
        super().__init__()
        self.index, self.start, self.stop = index, start, stop
        self.in_features, self.out_features = in_features, stop - start
        self.__dict__["shared"] = shared  # not a submodule: the parent holds the merged layer once

    def forward(self, x: Tensor) -> Tensor:
        return self.shared.part(x, self.index)

    def extra_repr(self) -> str:
        return f"columns {self.start}:{self.stop} of the merged layer, in_features={self.in_features}"


def merge_projections(model: nn.Module, groups=GROUPS) -> list[str]:
    """Merge every set of sibling Linears named by one of ``groups`` (all of one kind: ``nn.Linear``, or
    ``PackedLinear`` of one format and parameters) into one layer; returns the merged layers' qualified names. A set
    that cannot be merged (mixed kinds or formats) is left as it is, with a warning naming the reason."""
    merged = []
    for parent_name, parent in list(model.named_modules()):
        for names in groups:
            layers = [parent._modules.get(name) for name in names]
            if not all(isinstance(layer, (nn.Linear, PackedLinear)) for layer in layers):
                continue
            where = f"{parent_name}.{'/'.join(names)}" if parent_name else "/".join(names)
            try:
                linear = _merged_layer(layers)
            except UserInputError as exc:
                warnings.warn(f"{where} not merged: {exc}", stacklevel=2)
                continue
            joined = "_".join(names)
            _install(parent, names, layers, linear, joined)
            merged.append(f"{parent_name}.{joined}" if parent_name else joined)
    return merged


def refuse_merged(model: nn.Module, action: str) -> None:
    """One-line ``UserInputError`` when ``model``'s projections are merged: ``action`` (compress, save) needs the
    model's own Linears."""
    if any(isinstance(m, ProjectionSlice) for m in model.modules()):
        raise UserInputError("the model's projections are merged (merge_projections, an inference-time transform); "
                             f"{action} the model before merging them")


def _merged_layer(layers: list[nn.Module]) -> nn.Module:
    first = layers[0]
    if any(layer.in_features != first.in_features for layer in layers):
        raise UserInputError("the layers read inputs of different widths")
    devices = {t.device for layer in layers for t in (*layer.parameters(), *layer.buffers())}
    if len(devices) > 1:
        raise UserInputError(f"the layers sit on different devices ({', '.join(sorted(map(str, devices)))})")
    if all(type(layer) is nn.Linear for layer in layers):
        return _merged_dense(layers)
    if not all(isinstance(layer, PackedLinear) for layer in layers):
        kinds = sorted({type(layer).__name__ for layer in layers})
        raise UserInputError(f"layers of kinds {', '.join(kinds)} cannot share one weight")
    formats = {layer.format for layer in layers}
    if len(formats) > 1:
        raise UserInputError(f"formats {', '.join(sorted(formats))} cannot share one weight")
    if any(layer.kernel_options != first.kernel_options for layer in layers):
        raise UserInputError("the layers have different kernel options")
    packed = stack_rows(first.format, [layer.packed() for layer in layers], first.in_features)
    linear = PackedLinear.from_packed(packed, first.format, first.in_features, _merged_bias(layers))
    linear.kernel_options = dict(first.kernel_options)
    return linear


def _merged_dense(layers: list[nn.Linear]) -> nn.Linear:
    weight = torch.cat([layer.weight.detach() for layer in layers])
    bias = _merged_bias(layers)
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    trainable = layers[0].weight.requires_grad
    linear.weight = nn.Parameter(weight, requires_grad=trainable)
    if bias is not None:
        linear.bias = nn.Parameter(bias.to(weight.dtype), requires_grad=trainable)
    return linear


def _merged_bias(layers: list[nn.Module]) -> Tensor | None:
    """The biases end to end, zeros for layers without one (Qwen2 biases q/k/v), or None when none has one."""
    biases = [layer.bias for layer in layers]
    if all(b is None for b in biases):
        return None
    like = next(b for b in biases if b is not None)
    return torch.cat([b.detach() if b is not None else like.new_zeros(layer.out_features)
                      for b, layer in zip(biases, layers)])


def _install(parent: nn.Module, names, layers, linear: nn.Module, joined: str) -> None:
    shared = SharedResult(linear, [layer.out_features for layer in layers])
    parent.add_module(joined, linear)
    start = 0
    for index, (name, layer) in enumerate(zip(names, layers)):
        setattr(parent, name, ProjectionSlice(shared, index, start, start + layer.out_features, layer.in_features))
        start += layer.out_features
