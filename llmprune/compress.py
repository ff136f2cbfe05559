"""``compress_``: the one orchestrator. It maps a Recipe onto a model's Linears and drives the layer-wise engine.

Glue only: the algorithms live in prune/, refine/ and quant/ (pure functions over tensors), the hooks and the
layer loop in engine/. The CLI, the sweep and the batch runner all call this.
"""
from __future__ import annotations

import os
import time
import warnings

import torch
from torch import Tensor

from .errors import UserInputError
from .merged_projections import refuse_merged
from .plan import Plan, router_reason
from .recipe import NM, Groups, Recipe, Unstructured
from .report import Report


def resolve_sparsity_for_method(recipe: Recipe, group: int = 16) -> Recipe:
    """GQSA prunes whole groups: a plain fraction becomes ``Groups(g, fraction)`` with g from the quant spec (or 16)."""
    for pattern, sparsity in recipe.overrides:
        if recipe.method != "gqsa" and isinstance(sparsity, Groups):
            raise UserInputError(f"--override {pattern}={sparsity}: group sparsity needs --method gqsa")
        if recipe.method == "gqsa" and isinstance(sparsity, NM):
            raise UserInputError(f"--override {pattern}={sparsity}: --method gqsa prunes groups; give a fraction "
                                 f"(e.g. 0.3) or FRACTION@gSIZE")
    if recipe.method == "gqsa":
        size = recipe.quant.group if recipe.quant is not None and recipe.quant.group else group

        def grouped(sparsity):
            return Groups(size, sparsity.fraction) if isinstance(sparsity, Unstructured) else sparsity

        return recipe.with_(sparsity=None if recipe.sparsity is None else grouped(recipe.sparsity),
                            overrides=tuple((p, grouped(sp)) for p, sp in recipe.overrides))
    if isinstance(recipe.sparsity, Groups):
        raise UserInputError(f"--sparsity {recipe.sparsity}: group sparsity needs --method gqsa")
    return recipe


def check_format(recipe: Recipe, format: str) -> None:
    """What ``format`` demands of ``recipe`` (2:4 patterns, quantized codes, GQSA's groups), before any model is
    loaded: the compress job and the batch spec both ask here."""
    from .formats import check_recipe

    check_recipe(format, resolve_sparsity_for_method(recipe))


def needs_calibration(model, recipe: Recipe) -> bool:
    """llm-compressor's good habit: no calibration pass when no module needs data (e.g. magnitude)."""
    plan = build_plan(model, recipe)
    return any(plan.needs(name) for name in plan.targets)


def build_plan(model, recipe: Recipe, format: str | None = None) -> Plan:
    """The modules to compress and their sparsity; every shape check (and, given ``format``, the packed format's)
    runs here, before any calibration. Fused MoE experts are split into Linears here (``model.experts``: the same
    function, checked), the one change made to ``model``."""
    from .model.experts import unfuse_experts_
    from .model.layers import decoder_layers, get_weight, linears, other_weights
    from .packing import storage_dtype

    _refuse_packed(model)  # the CLI builds the plan before compress_ does
    _refuse_unreachable_weights(model)
    unfuse_experts_(model)  # fused MoE experts become Linears first, or they would be left dense
    from .engine.lm_head import head_name

    layers, path = decoder_layers(model)
    modules, kept_dense, owners = {}, {}, []
    for index, layer in enumerate(layers):
        for name, module in linears(layer).items():
            modules[f"{path}.{index}.{name}"] = module
        for weight, owner in other_weights(layer).items():
            kept_dense[f"{path}.{index}.{weight}"] = router_reason(owner) or "not a Linear (kept dense)"
            owners.append(f"{path}.{index}.{owner}")
    try:
        head = head_name(model)
    except ValueError:  # no output embeddings
        head = None
    if recipe.include_lm_head:
        modules[head[0]] = head[1]
    plan = Plan(resolve_sparsity_for_method(recipe), modules)
    plan.check_patterns_match([*modules, *owners, *([head[0]] if head else [])])
    plan.report.skipped.update(kept_dense)
    plan.storage_dtype = storage_dtype(model)  # one model whatever the format: see uniform.stored_scale
    plan.check_shapes(modules, lambda m: tuple(get_weight(m).shape), format)
    return plan


def _refuse_packed(model) -> None:
    """A model loaded from a packed checkpoint (``llmprune.load``, or transformers with llmprune imported) holds
    codes, not weights to compress."""
    from .model.load import refuse_quantized
    from .packed_linear import PackedLinear

    refuse_quantized(getattr(model, "config", None), "the model")
    packed = next((name for name, m in model.named_modules() if isinstance(m, PackedLinear)), None)
    if packed is not None:
        raise UserInputError(f"the model is already packed ({packed} is a PackedLinear); compress the original model, "
                             f"or unpack it first (model.dequantize(), llmprune.packed_linear.unpack_linears_)")


def _refuse_unreachable_weights(model) -> None:
    """Weights llmprune would not really change: offloaded ones (accelerate's ``cpu_offload`` or a ``device_map``
    with "disk" leave them on the meta device, and moving a layer fails after earlier layers were already pruned),
    and ones ``torch.nn.utils.prune`` or a parametrization recomputes from ``weight_orig`` at every forward (a
    written weight is overwritten: the model would stay as it was)."""
    from torch.nn.utils import parametrize

    meta = next((name for name, p in model.named_parameters() if p.device.type == "meta"), None)
    if meta is not None:
        raise UserInputError(f"{meta} is offloaded (on the meta device); load the model into memory without "
                             f"offloading (no device_map, or device_map='cpu'): llmprune moves one layer at a time "
                             f"to its device itself")
    hooked = next((name for name, m in model.named_modules()
                   if hasattr(m, "weight_orig") or parametrize.is_parametrized(m)), None)
    if hooked is not None:
        raise UserInputError(f"{hooked} recomputes its weight at every forward (torch.nn.utils.prune or a "
                             f"parametrization); make it plain first (torch.nn.utils.prune.remove(module, 'weight') "
                             f"or parametrize.remove_parametrizations)")


def _check_run(model, calib, device: str, batch_size: int) -> None:
    """The arguments ``compress_`` takes from Python, as the CLI checks its flags: one line each, before any work."""
    from .model.layers import check_seqlen
    from .pipeline import check_device

    check_device(device)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UserInputError(f"batch_size={batch_size!r}: must be a whole number >= 1")
    if calib is None:
        return
    ids = getattr(calib, "ids", None)
    if not isinstance(ids, Tensor) or ids.ndim != 2 or ids.dtype != torch.long:
        raise UserInputError(f"calib={type(calib).__name__}: give a CalibrationSet "
                             f"(llmprune.calibration_windows(tokenizer, Calibration(...)))")
    vocab = getattr(model.config, "vocab_size", None)
    if vocab is not None and ids.numel() and int(ids.max()) >= vocab:
        raise UserInputError(f"the calibration windows hold token id {int(ids.max())}, beyond the model's vocabulary "
                             f"of {vocab}; draw them with this model's own tokenizer")
    check_seqlen(model, ids.shape[1], "the calibration windows' length")


def compress_(model, recipe: Recipe, calib=None, *, device: str = "cpu", batch_size: int = 8,
              progress: bool = True, forward_dtype: torch.dtype | None = None, captured=None,
              pack: str | None = None, spill_dir: str | os.PathLike | None = None) -> Report:
    """Compress ``model`` in place following ``recipe``.

    ``calib``: a ``CalibrationSet`` (``llmprune.calibration_windows``), or None when no module needs statistics.
    ``device``: where each layer is compressed (the model stays where it is; one layer at a time moves).
    ``batch_size``: calibration windows per forward. ``progress``: a bar over the layers. ``forward_dtype`` runs the
    calibration forwards in another dtype (statistics stay float32; see ``engine.sequential.run_sequential_``).
    ``captured``: layer-0 inputs already captured from ``calib`` on this dense model
    (``engine.capture.capture_inputs``), reused instead of a new capture — a sweep captures once.
    ``pack`` (a format, e.g. ``"sparse24_int4"``): each decoder layer's compressed Linears become ``PackedLinear``
    modules as soon as the layer is done, so finished layers hold their packed bytes rather than dense weights
    (``llmprune compress --format`` does this; ``save(model, ..., report=report, format=pack)`` writes the result).
    ``spill_dir`` (a folder on a disk; dense output only): each finished layer's compressed weights move into
    memory backed by unlinked files there (``engine/spill.py``), which the kernel can write back and drop, so a
    model whose checkpoint is mmapped (loaded in its own dtype) can be compressed in less memory than it takes.
    A ``torch.compile`` wrapper is compressed through the module it wraps (names stay the model's), and the
    forwards run in eval mode (no dropout), the model's mode restored after. Returns the ``Report`` (per-layer
    records, quantized codes, timings); a user mistake raises ``UserInputError`` before any weight changes."""
    model = getattr(model, "_orig_mod", model)  # torch.compile's OptimizedModule: the same parameters
    refuse_merged(model, "compress")
    if recipe.sparsity is None and recipe.quant is None and not recipe.overrides:
        raise UserInputError("nothing to do: the recipe has no sparsity and no quant (e.g. "
                             "Recipe(method='wanda', sparsity=parse_sparsity('2:4')))")
    _check_run(model, calib, device, batch_size)
    if pack is not None:
        check_format(recipe, pack)
    spill = _spill(spill_dir, pack)
    was_training = model.training
    model.eval()
    try:
        return _compress(model, recipe, calib, device, batch_size, progress, forward_dtype, captured, pack, spill)
    finally:
        model.train(was_training)


def _spill(spill_dir, pack):
    if spill_dir is None:
        return None
    if pack not in (None, "dense"):
        raise UserInputError(f"spill_dir is for dense outputs; pack={pack!r} already frees each layer's dense "
                             f"weight as it packs it: drop spill_dir")
    from .engine.spill import Spill

    return Spill(spill_dir)


def _compress(model, recipe, calib, device, batch_size, progress, forward_dtype, captured, pack, spill) -> Report:
    from .engine.sequential import run_sequential_, run_without_calibration_

    start = time.perf_counter()
    plan = build_plan(model, recipe, pack)  # the format's shape checks too, before any work
    plan.pack_format = None if pack == "dense" else pack
    plan.spill = spill
    plan.calib_seqlen = None if calib is None else int(calib.ids.shape[1])
    if not plan.targets:
        raise UserInputError("no Linear layer left to compress; check --ignore patterns")
    if any(plan.needs(name) for name in plan.targets):
        if calib is None:
            raise UserInputError(f"--method {recipe.method} needs calibration data; give --calib (from Python: "
                                 f"compress_(model, recipe, llmprune.calibration_windows(tokenizer, Calibration())))")
        start_from = calib.ids if captured is None else captured
        engine_info = run_sequential_(model, start_from, plan, device=device, batch_size=batch_size,
                                      progress=progress, forward_dtype=forward_dtype,
                                      all_experts=recipe.experts == "all")
        unrouted = plan.report.uncalibrated()
        if unrouted:
            warnings.warn(f"{len(unrouted)} Linear layers (e.g. {unrouted[0]}) saw no calibration token, as the "
                          f"router chose none of their experts; they were compressed from weights alone (identity "
                          f"statistics); more calibration data (--nsamples) or --calib-experts all reaches them",
                          stacklevel=2)
    else:
        engine_info = run_without_calibration_(model, plan, device=device, progress=progress)
    if plan.report.filled:
        from .earlier_zeros import filled_warning

        warnings.warn(filled_warning(plan.report.filled, recipe.quant.method), stacklevel=2)
    if recipe.include_lm_head:
        from .engine.lm_head import compress_lm_head_

        compress_lm_head_(model, plan, None if calib is None else calib.ids, batch_size=batch_size)
        if spill is not None:
            spill.move_(model.get_output_embeddings())
    plan.report.timings = {"compress_seconds": round(time.perf_counter() - start, 3),
                           **{k: v for k, v in (engine_info or {}).items() if isinstance(v, (int, float))}}
    return plan.report
