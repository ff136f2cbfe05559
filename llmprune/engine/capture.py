"""Capture what the decoder layers receive: the hidden states entering layer 0 and every layer's own arguments.

The model runs its usual forward on the calibration ids with each decoder layer swapped for a ``_Catcher`` that records
its positional and keyword arguments (attention mask, position ids, rotary ``position_embeddings``, cache position...)
and passes the hidden states through; the last catcher stops the forward with the private ``_StopForward``. This is
the reference code's ``Catcher`` (Wanda / SparseGPT ``prepare_calibration_input``), extended to record *every* layer's
arguments, because they differ per layer in some models: Gemma2/3 give sliding-window layers another mask and other
rotary embeddings than global layers (transformers 5.x builds a ``causal_mask_mapping`` keyed by layer type before the
layer loop). Whatever the model computes before its layer loop is thereby captured exactly, with no per-model code.

Memory-bounded: while the catchers stand in for the layers, only the rest of the model (embeddings, rotary and
positional embeddings, final norm, lm_head) is moved to ``device``; the decoder layers stay where they are. Calibration
windows are unpadded, so a layer's arguments depend on the batch shape only; batches whose arguments are equal to an
earlier batch's share that batch's record (one 4D eager mask per distinct shape, not one per batch).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..model.layers import decoder_layers


class _StopForward(Exception):
    """Raised by the last catcher: nothing after the decoder layers needs to run."""


@dataclass
class LayerCall:
    """The arguments one decoder layer receives, minus its hidden states.

    ``positional`` says whether the hidden states came as the first positional argument (else as ``hidden_states=``).
    """

    args: tuple
    kwargs: dict
    positional: bool = True

    def __call__(self, layer: nn.Module, hidden: Tensor) -> Tensor:
        """Run ``layer`` on ``hidden`` with the captured arguments; return its output hidden states."""
        if self.positional:
            out = layer(hidden, *self.args, **self.kwargs)
        else:
            out = layer(*self.args, hidden_states=hidden, **self.kwargs)
        return out[0] if isinstance(out, (tuple, list)) else out


@dataclass
class Captured:
    """``hidden[b]``: the inputs of layer 0 for batch ``b`` ([batch, seqlen, hidden], on the compute device).
    ``calls[b][i]``: the LayerCall of layer ``i`` for batch ``b`` (equal records are shared between batches)."""

    hidden: list[Tensor] = field(default_factory=list)
    calls: list[list[LayerCall]] = field(default_factory=list)


class _Catcher(nn.Module):
    """Stands in for decoder layer ``index``: records its arguments and returns the hidden states unchanged."""

    def __init__(self, layer: nn.Module, index: int, last: bool, sink: list):
        super().__init__()
        object.__setattr__(self, "_layer", layer)  # not a submodule: model.to(device) must not move it
        self.index, self.last, self.sink = index, last, sink

    def __getattr__(self, name):  # the model may read layer attributes (e.g. ``attention_type``) in its loop
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "_layer"), name)

    def forward(self, *args, **kwargs):
        positional = bool(args)
        hidden = args[0] if positional else kwargs.pop("hidden_states")
        self.sink.append((hidden, LayerCall(tuple(args[1:]), dict(kwargs), positional)))
        if self.last:
            raise _StopForward
        return hidden


def _same(a, b) -> bool:
    """Structural equality of captured arguments (tensors by value)."""
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return (isinstance(a, Tensor) and isinstance(b, Tensor) and a.shape == b.shape and a.dtype == b.dtype
                and a.device == b.device and torch.equal(a, b))
    if isinstance(a, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a is b or (type(a) is type(b) and isinstance(a, (int, float, str, bool)) and a == b)


def _share(call: LayerCall, distinct: list[LayerCall]) -> LayerCall:
    """An earlier equal record if there is one (then ``call`` is dropped), else ``call``, now remembered."""
    for other in distinct:
        if other.positional == call.positional and _same(other.args, call.args) and _same(other.kwargs, call.kwargs):
            return other
    distinct.append(call)
    return call


def model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@torch.no_grad()
def capture_inputs(model: nn.Module, calib_ids: Tensor, *, device="cpu", batch_size: int = 1) -> Captured:
    """Run ``model`` up to its decoder layers on ``calib_ids`` [n, seqlen] in batches; return the Captured inputs."""
    layers, _ = decoder_layers(model)
    device, home = torch.device(device), model_device(model)
    sink: list = []
    distinct: list[LayerCall] = []
    originals = list(layers)
    captured = Captured()
    try:
        for index, layer in enumerate(originals):
            layers[index] = _Catcher(layer, index, index == len(originals) - 1, sink)
        model.to(device)
        for batch in calib_ids.split(batch_size):
            sink.clear()
            try:
                model(input_ids=batch.to(device), use_cache=False)
            except _StopForward:
                pass
            if len(sink) != len(originals):
                raise RuntimeError(f"captured {len(sink)} of {len(originals)} decoder layer calls; "
                                   f"{type(model).__name__} does not call every layer once per forward")
            captured.hidden.append(sink[0][0])
            captured.calls.append([_share(call, distinct) for _, call in sink])
    finally:
        for index, layer in enumerate(originals):
            layers[index] = layer
        model.to(home)
        sink.clear()
    return captured
