"""The single layer-wise loop: capture -> per decoder layer: stats -> compress each Linear -> re-run -> next inputs.

This is the sequential scheme of the SparseGPT and Wanda reference code (``llama_sequential`` / ``prune_wanda``):
the calibration activations travel through the model one decoder layer at a time; each layer's Linears are compressed
from statistics of *its* inputs, and the next layer's inputs come from the *compressed* layer. Only the current layer
and the activations live on ``device``; the rest of the model stays where it is (memory-bounded).

The engine knows nothing about methods. It drives a ``LinearTask``:

- ``needs(name) -> frozenset[str]``: the statistics ``name`` needs (``"input_sq_norms"``, ``"hessian"``,
  ``"input_mean"``, ``"input_var"``); only those are computed.
- ``__call__(name, weight[out, in] float32 on device, stats: Stats) -> Tensor[out, in]``: the new weight.
- optional ``wants(name) -> bool``: False leaves the module untouched (no call, no write-back). Without it every
  Linear of every decoder layer is visited (modules with no needs get ``Stats()`` with ``None`` fields).
- optional ``layer_done(layer, prefix, names)``: called once a decoder layer is finished (compressed, its outputs
  computed, back on its home device), with the qualified names it compressed; the layer is never run again, so the
  task may replace its modules (the plan packs them: ``Plan.pack_format``).

Names are the model's qualified ``named_modules()`` names (``model.layers.0.self_attn.q_proj``).
"""
from __future__ import annotations

import copy
import time

import torch
from torch import Tensor, nn

from ..model.experts import calibrating_all_experts, has_routed_experts
from ..model.layers import decoder_layers, get_weight, linears, set_weight_
from ..types import Stats
from .capture import Captured, LayerCall, capture_inputs, model_device
from .free_memory import release_freed_memory
from .stats import StatsCollector, StopLayer


def _wants(task, name: str) -> bool:
    wants = getattr(task, "wants", None)
    return True if wants is None else bool(wants(name))


def _targets(task, layer: nn.Module, prefix: str) -> dict[str, nn.Module]:
    """The layer's Linears the task wants, by qualified name, in module order."""
    found = {f"{prefix}.{name}": module for name, module in linears(layer).items()}
    return {name: module for name, module in found.items() if _wants(task, name)}


def _finish_layer(task, layer: nn.Module, prefix: str, targets: dict[str, nn.Module]) -> None:
    """The task's ``layer_done`` hook, then the layer's freed temporaries go back to the system."""
    done = getattr(task, "layer_done", None)
    if done is not None:
        done(layer, prefix, list(targets))
    release_freed_memory()  # the layer's temporaries, which glibc would keep in its heap


def _compress_linears_(task, targets: dict[str, nn.Module], collector: StatsCollector | None) -> None:
    for name, module in targets.items():
        weight = get_weight(module).to(torch.float32, copy=True)
        stats = collector.stats(name) if collector is not None else Stats()
        new = task(name, weight, stats)
        if not isinstance(new, Tensor):
            raise TypeError(f"the task returned {type(new).__name__} for {name}; expected the new weight tensor")
        set_weight_(module, new)


def _forward_all(layer: nn.Module, captured: Captured, index: int, collector: StatsCollector | None = None,
                 keep: bool = True) -> None:
    """Run ``layer`` on every batch; with ``keep`` its outputs replace the stored hidden states (next inputs)."""
    for b, hidden in enumerate(captured.hidden):
        try:
            out = captured.calls[b][index](layer, hidden)
        except StopLayer:  # statistics pass: every needed input was recorded (see StatsCollector.hooks)
            out = None
        if collector is not None:
            collector.flush()
        if keep:
            captured.hidden[b] = out


def _start(model: nn.Module, calib, device, batch_size: int) -> Captured:
    """Capture from ids, or take a Captured as given: a copy of its list, so the caller's tensors stay untouched."""
    if isinstance(calib, Captured):
        if calib.hidden and calib.hidden[0].device != torch.device(device):
            raise ValueError(f"the captured inputs are on {calib.hidden[0].device}, the engine runs on {device}")
        return Captured(list(calib.hidden), calib.calls)
    if not isinstance(calib, Tensor) or calib.ndim != 2 or calib.dtype not in (torch.int64, torch.int32):
        raise ValueError("calib_ids must be an integer tensor [nsamples, seqlen] or a Captured from capture_inputs")
    return capture_inputs(model, calib, device=device, batch_size=batch_size)


def _progress(items, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="layer", disable=not enabled, leave=False)


def _cast(value, dtype: torch.dtype):
    """``value`` with its floating tensors cast to ``dtype``."""
    if isinstance(value, Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, (tuple, list)):
        return type(value)(_cast(v, dtype) for v in value)
    if isinstance(value, dict):
        return {k: _cast(v, dtype) for k, v in value.items()}
    return value


def cast_captured(captured: Captured, dtype: torch.dtype) -> Captured:
    """A copy for layer forwards in ``dtype``: hidden states and every floating layer argument (rotary cos/sin, float
    masks) cast once, as a model loaded in that dtype would compute them. Records shared between batches stay shared;
    ``captured`` itself is not modified (it may be reused by the caller)."""
    new_calls: dict[int, LayerCall] = {}
    for calls in captured.calls:
        for call in calls:
            if id(call) not in new_calls:
                new_calls[id(call)] = LayerCall(_cast(call.args, dtype), _cast(call.kwargs, dtype), call.positional)
    return Captured([h.to(dtype) for h in captured.hidden],
                    [[new_calls[id(call)] for call in calls] for calls in captured.calls])


@torch.no_grad()
def run_sequential_(model: nn.Module, calib_ids: Tensor | Captured, task, *, device="cpu", batch_size: int = 1,
                    progress: bool = True, forward_dtype: torch.dtype | None = None,
                    all_experts: bool = False) -> dict:
    """Compress ``model`` in place layer by layer with ``task``, calibrating on ``calib_ids`` [n, seqlen].

    ``calib_ids`` may instead be a ``Captured`` from ``capture_inputs`` (on ``device``), to reuse one capture across
    several runs on the same dense model (a sweep); it is not modified.

    ``forward_dtype`` (e.g. bfloat16) runs the two calibration forwards of each layer on a copy of the layer in that
    dtype, as the reference code runs them in float16 on GPU; the statistics still accumulate in float32 and the
    algorithms still see (and write) the model's own float32 weights. None: forwards in the model's dtype.

    ``all_experts``: during each layer's statistics forward, MoE experts also run on every token
    (``model.experts.calibrating_all_experts``); the forward that makes the next layer's inputs routes as usual.

    Returns ``{"capture_seconds", "stats_seconds", "task_seconds", "forward_seconds", "engine_seconds",
    "calibration_tokens", "layers": [per-layer dicts]}``.
    """
    start = time.perf_counter()
    layers, path = decoder_layers(model)
    captured = _start(model, calib_ids, device, batch_size)
    if forward_dtype is not None:
        captured = cast_captured(captured, forward_dtype)
    tokens = sum(h.shape[0] * h.shape[1] for h in captured.hidden)
    info = {"capture_seconds": time.perf_counter() - start, "stats_seconds": 0.0, "task_seconds": 0.0,
            "forward_seconds": 0.0, "calibration_tokens": int(tokens), "layers": []}
    for index, layer in enumerate(_progress(layers, progress, "compressing layers")):
        info["layers"].append(_run_layer_(task, layer, index, f"{path}.{index}", captured, device, info,
                                          forward_dtype, all_experts))
    info["engine_seconds"] = time.perf_counter() - start
    return info


def _forward_copy(layer: nn.Module, dtype: torch.dtype | None) -> nn.Module:
    return layer if dtype is None else copy.deepcopy(layer).to(dtype)


def _run_layer_(task, layer: nn.Module, index: int, prefix: str, captured: Captured, device, info: dict,
                forward_dtype: torch.dtype | None = None, all_experts: bool = False) -> dict:
    """One step of the loop; adds its times to ``info`` and returns the layer's record."""
    home = model_device(layer)
    layer.to(device)
    targets = _targets(task, layer, prefix)
    needs = {name: frozenset(task.needs(name)) for name in targets}
    fwd = _forward_copy(layer, forward_dtype if any(needs.values()) else None)
    collector = StatsCollector({name: (fwd.get_submodule(name[len(prefix) + 1:]), needs[name]) for name in targets})
    t0 = time.perf_counter()
    if collector.active:  # experts run in routed order: no Linear is reliably the last one
        with collector.hooks(stop_early=not has_routed_experts(layer)), calibrating_all_experts(fwd, all_experts):
            _forward_all(fwd, captured, index, collector, keep=False)
    t1 = time.perf_counter()
    _compress_linears_(task, targets, collector)
    t2 = time.perf_counter()
    _forward_all(_forward_copy(layer, forward_dtype), captured, index)
    t3 = time.perf_counter()
    layer.to(home)
    _finish_layer(task, layer, prefix, targets)
    info["stats_seconds"] += t1 - t0
    info["task_seconds"] += t2 - t1
    info["forward_seconds"] += t3 - t2
    return {"index": index, "modules": list(targets), "shared_inputs": [list(g) for g in collector.groups() if len(g) > 1],
            "stats_seconds": round(t1 - t0, 4), "task_seconds": round(t2 - t1, 4), "forward_seconds": round(t3 - t2, 4)}


@torch.no_grad()
def run_without_calibration_(model: nn.Module, task, *, device="cpu", progress: bool = True) -> dict:
    """Visit every wanted Linear of every decoder layer once, with empty ``Stats()`` (magnitude needs no data).

    No forward pass runs at all (llm-compressor skips calibration when no modifier needs data; so do we).
    """
    start = time.perf_counter()
    layers, path = decoder_layers(model)
    records = []
    for index, layer in enumerate(_progress(layers, progress, "compressing layers")):
        home = model_device(layer)
        layer.to(device)
        targets = _targets(task, layer, f"{path}.{index}")
        _compress_linears_(task, targets, None)
        layer.to(home)
        _finish_layer(task, layer, f"{path}.{index}", targets)
        records.append({"index": index, "modules": list(targets)})
    elapsed = time.perf_counter() - start
    return {"task_seconds": elapsed, "engine_seconds": elapsed, "layers": records}
