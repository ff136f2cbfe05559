"""``compress_``: the one orchestrator. It maps a Recipe onto a model's Linears and drives the layer-wise engine.

Glue only: the algorithms live in prune/, refine/ and quant/ (pure functions over tensors), the hooks and the
layer loop in engine/. The CLI, the sweep and the batch runner all call this.
"""
from __future__ import annotations

import inspect
import re
import time
import warnings
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .errors import UserInputError
from .layer_records import weighted_mean
from .masks import check_shape, verify_pattern
from .merged_projections import refuse_merged
from .options import like
from .recipe import NM, Groups, Recipe, Sparsity, Unstructured
from .types import Pruned, QuantizedWeight, Stats


@dataclass
class Report:
    """What a compression run did: per-Linear records, the quantized representations, timings."""

    records: dict[str, dict] = field(default_factory=dict)
    quantized: dict[str, QuantizedWeight] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # module -> reason (ignored by the recipe)
    filled: list[str] = field(default_factory=list)  # pruned earlier, filled in by a dense-only quantizer

    def achieved_sparsity(self) -> float:
        zeros = sum(r["zeros"] for r in self.records.values())
        total = sum(r["numel"] for r in self.records.values())
        return zeros / total if total else 0.0

    def uncalibrated(self) -> list[str]:
        """Linears that needed statistics but saw no calibration token (experts the router never chose)."""
        return [name for name, r in self.records.items() if r.get("uncalibrated")]

    def bits_per_param(self) -> float | None:
        """Average bits/parameter of the quantized Linears by the quantizers' accounting (``quant/bits_per_param``):
        what the quantized representation needs, whatever ``--format`` stores; None without ``--quant``."""
        return weighted_mean(self.records, "bits_per_param")

    def outlier_fraction(self) -> float | None:
        """SpQR: fraction of weights kept as 16-bit outliers over the quantized Linears."""
        return weighted_mean(self.records, "outlier_fraction")

    def to_dict(self) -> dict:
        summary = {"bits_per_param": self.bits_per_param(), "outlier_fraction": self.outlier_fraction()}
        return {"achieved_sparsity": self.achieved_sparsity(),
                **{k: v for k, v in summary.items() if v is not None},
                "layers": self.records, "skipped": self.skipped, "timings": self.timings}


def _call_with_options(fn, *args, options: dict):
    """Pass the options ``fn`` declares as keyword arguments (damp, block, name, ...), nothing else."""
    params = inspect.signature(fn).parameters
    return fn(*args, **{k: v for k, v in options.items() if k in params})


ROUTERS = ("gate", "router", "shared_expert_gate")  # MoE routing Linears (not gate_proj)


def _router_reason(name: str) -> str | None:
    """MoE routers stay dense, as in llm-compressor's MoE recipes (``re:.*mlp.gate$``): they are a sliver of the
    weights, and an error in them sends tokens to the wrong experts. A router is a module named ``gate``/``router``
    (not ``gate_proj``) or anything inside one (HunYuan's ``mlp.gate.wg``)."""
    return "MoE router (kept dense)" if set(name.split(".")) & set(ROUTERS) else None


INTERNAL_OPTIONS = {"name", "mask", "calib_seqlen", "scale_dtype", "damp", "block"}  # set by the plan or the recipe


def option_defaults(recipe: Recipe) -> dict[str, tuple[object, str]]:
    """The ``--option`` names the steps of ``recipe`` read, each with its default and the step that reads it:
    keyword-only parameters of its method, refiner and quantizer functions (and of the joint SparseGPT + GPTQ
    sweep), plus those a registry entry names in ``options`` (name: default); the plan's own arguments aside."""
    from .prune import METHODS
    from .refine import REFINERS

    refiner = None if recipe.refine is None else REFINERS.get(recipe.refine)
    entries = [e for e in (METHODS.get(recipe.method), refiner, Plan._quantizer(recipe)) if e is not None]
    steps = [(e.name, e.fn) for e in entries]
    if recipe.quant is not None and recipe.method == "sparsegpt" and recipe.quant.method == "gptq":
        from .quant.gptq import sparsegpt_quant

        steps.append(("sparsegpt+gptq", sparsegpt_quant))
    defaults = {k: (v, e.name) for e in entries for k, v in e.meta.get("options", {}).items()}
    for step, fn in steps:
        for p in inspect.signature(fn).parameters.values():
            if p.kind == p.KEYWORD_ONLY:
                defaults.setdefault(p.name, (p.default, step))
    return {k: v for k, v in defaults.items() if k not in INTERNAL_OPTIONS}


def accepted_options(recipe: Recipe) -> set[str]:
    """The ``--option`` names the steps of ``recipe`` read (``option_defaults``)."""
    return set(option_defaults(recipe))


def typed_options(recipe: Recipe) -> Recipe:
    """``recipe`` with each ``--option`` read as its parameter's default reads (``options.like``): an option no
    step of this recipe reads would be recorded in the manifest and silently do nothing, and a text where a
    flag or number belongs would run as something else or fail inside a layer: both are refused, in one line."""
    defaults = option_defaults(recipe)
    given = dict(recipe.options)
    fields = sorted(set(given) & {"damp", "block"})
    if fields:
        raise UserInputError(f"--option {fields[0]}: set it with --{fields[0]} (a recipe field)")
    unknown = sorted(set(given) - set(defaults) - {"calib_seqlen"})  # the sweep passes the window length
    if unknown:
        raise UserInputError(f"--option {unknown[0]}: not an option of this recipe; choose one of "
                             f"{', '.join(sorted(defaults)) or '(none)'}")
    typed = {k: like(v, k, *defaults.get(k, (None, ""))) for k, v in given.items()}
    return recipe.with_(options=tuple(sorted(typed.items())))


class Plan:
    """The recipe resolved per module: which Linears are compressed, with which pattern, and what they need.

    It is the engine's ``LinearTask``: ``needs(name)`` and ``__call__(name, weight, stats) -> new weight``.
    """

    def __init__(self, recipe: Recipe, modules: dict[str, torch.nn.Module]):
        from .prune import METHODS

        self.recipe = recipe
        self.calib_seqlen: int | None = None  # DSnoT scales its threshold by the calibration sequence length
        self.scale_dtype: torch.dtype | None = None  # quantization scales rounded as stored (build_plan sets it)
        self.method = METHODS.get(recipe.method)
        self.refiner = self._refiner(recipe)
        self.quantizer = self._quantizer(recipe)
        self.recipe = recipe = typed_options(recipe)
        self.report = Report()
        self.targets: dict[str, Sparsity | None] = {}
        moe = any(".experts." in name for name in modules)
        for name, module in modules.items():
            reason = (moe and _router_reason(name)) or self._ignored(name)
            if reason:
                self.report.skipped[name] = reason
                continue
            self.targets[name] = self._sparsity_for(name)

    def check_patterns_match(self, names) -> None:
        """An ``--ignore`` or ``--override`` pattern that names no module is a typo that would silently compress
        everything as the default says: refuse it, naming a layer to write the pattern against. ``names``: every
        module a pattern may mean, those kept dense anyway included (``lm_head``, MoE routers)."""
        names = list(names)
        for flag, pattern in [("--ignore", p) for p in self.recipe.ignore] + \
                             [("--override", p) for p, _ in self.recipe.overrides]:
            if not any(re.search(pattern, name) for name in names):
                example = next(iter(names), "")
                raise UserInputError(f"{flag} {pattern!r}: matches no layer of this model; patterns are regular "
                                     f"expressions searched in module names such as {example!r}")

    @staticmethod
    def _refiner(recipe: Recipe):
        if recipe.refine is None:
            return None
        from .refine import REFINERS

        entry = REFINERS.get(recipe.refine)
        check = entry.meta.get("check")
        if check is not None:
            check(recipe)
        return entry

    @staticmethod
    def _quantizer(recipe: Recipe):
        if recipe.quant is None:
            return None
        from .quant import QUANTIZERS

        return QUANTIZERS.get(recipe.quant.method)

    def _ignored(self, name: str) -> str | None:
        for pattern in self.recipe.ignore:
            if re.search(pattern, name):
                return f"ignored by --ignore {pattern}"
        return None

    def _sparsity_for(self, name: str) -> Sparsity | None:
        for pattern, sparsity in self.recipe.overrides:
            if re.search(pattern, name):
                return sparsity
        return self.recipe.sparsity

    def check_shapes(self, modules: dict[str, torch.nn.Module], shape, format: str | None = None) -> None:
        """Fail before calibration when a layer cannot hold its pattern, its quantization or (given ``format``)
        its packed storage; the error names the layer. ``shape(module)`` gives (out_features, in_features)."""
        from .formats import check_layer

        if self.quantizer is not None and not self.quantizer.meta.get("takes_mask", True):
            pruned = next((name for name, sparsity in self.targets.items() if sparsity is not None), None)
            if pruned is not None:
                raise UserInputError(f"{pruned}: --quantizer {self.recipe.quant.method} quantizes dense weights and "
                                     f"takes no sparsity; drop --sparsity or use --quantizer gptq or rtn")
        from .quant.uniform import check_quant_shape

        short, grouped, quant = [], set(), self.recipe.quant_as_run()
        for name, sparsity in self.targets.items():
            n_out, n_in = shape(modules[name])
            if sparsity is not None:
                check_shape(n_in, sparsity, name)
                short += _group_shortfall(name, n_in, sparsity)
                grouped |= {n_in} if isinstance(sparsity, Groups) else set()
            if quant is not None:
                check_quant_shape(n_in, quant, name, out_features=n_out)
            if format is not None:
                check_layer(format, name, n_out, n_in, quant=quant, sparsity=sparsity)
        if short:
            name, n, dropped, sparsity = min(short, key=lambda item: item[2] / item[1])
            better = _closer_group(grouped, sparsity)
            same = f" --quant w{quant.bits}g{better}{'s' * quant.symmetric}" if quant is not None and better else ""
            hint = (f"groups of {better} reach it (--sparsity {sparsity.fraction!r}@g{better}{same})" if better else
                    "no smaller group dividing those layers reaches it; exclude them with --ignore")
            warnings.warn(f"{len(short)} Linear layers prune fewer weights than --sparsity {sparsity.fraction!r} "
                          f"asks: a row drops whole groups, int(groups x fraction) of them (e.g. {name}: {dropped} "
                          f"of {n} groups of {sparsity.size}, sparsity {dropped / n:.3f}); {hint}",
                          stacklevel=1)  # one location: the CLI's plan and compress_'s plan warn once together

    def refine_applies(self, name: str) -> bool:
        """A refiner may limit itself to some modules (DSnoT's reference refines attention projections only)."""
        if self.refiner is None or self.targets.get(name) is None:
            return False
        applies = self.refiner.meta.get("applies")
        return True if applies is None else bool(applies(name, dict(self.recipe.options)))

    def needs(self, name: str) -> frozenset[str]:
        if name not in self.targets:
            return frozenset()
        needs = set(self.method.needs) if self.targets[name] is not None else set()
        if self.refine_applies(name) and self.targets[name] is not None:
            needs |= set(self.refiner.needs)
        if self.quantizer is not None:
            needs |= set(self.quantizer.needs)
        return frozenset(needs)

    def wants(self, name: str) -> bool:
        return name in self.targets

    def options(self, name: str) -> dict:
        extra = {} if self.calib_seqlen is None else {"calib_seqlen": self.calib_seqlen}
        extra["scale_dtype"] = self.scale_dtype
        # the plan's own values last: an --option may not replace them (INTERNAL_OPTIONS)
        return {**dict(self.recipe.options), "damp": self.recipe.damp, "block": self.recipe.block, "name": name,
                **extra}

    def __call__(self, name: str, weight: Tensor, stats: Stats) -> Tensor:
        if name not in self.targets:
            return weight
        start = time.perf_counter()
        sparsity = self.targets[name]
        W = weight.float()
        record: dict = {"method": self.recipe.method, "target": str(sparsity) if sparsity else "dense",
                        "shape": list(W.shape)}
        mask = None
        if sparsity is not None and not self._joint():
            pruned: Pruned = _call_with_options(self.method.fn, W, stats, sparsity, options=self.options(name))
            if self.refine_applies(name):
                pruned = _call_with_options(self.refiner.fn, W, pruned, stats, sparsity, options=self.options(name))
                record["refine"] = self.recipe.refine
            record.update(pruned.info)
            W, mask = pruned.weight, pruned.mask
        if self.quantizer is not None:
            if sparsity is None:  # a layer pruned by an earlier run keeps its zeros (earlier_zeros.py)
                mask = self._earlier_mask(name, W, record)
            W, mask = self._quantize(name, W, stats, sparsity, mask, record)
        if sparsity is not None:
            record["sparsity"] = verify_pattern(mask, sparsity, compare=self._compare(name), name=name,
                                                block=self.recipe.block)
        if stats.tokens == 0 and self.needs(name):
            record["uncalibrated"] = True  # no token reached it (an unrouted expert): identity statistics
        # pruned weights: by this run's mask, or zero before it and still zero (a layer pruned earlier, pruned again
        # to a lower target, keeps more zeros than its new mask says); a quantizer's zero codes are not
        zeros = 0 if mask is None else int(((~mask | (weight == 0)) & (W == 0)).sum())
        record.update({"zeros": zeros, "numel": W.numel(), "seconds": round(time.perf_counter() - start, 4)})
        self.report.records[name] = record
        return W.to(weight.dtype)

    def _compare(self, name: str) -> str:
        """The comparison group whose counts must be exact. A refiner keeps per-row counts, which preserves the
        total but not SparseGPT's per-block counts: a refined SparseGPT mask is verified by the total of its blocks."""
        compare = getattr(self.method, "compare", "row")
        if compare == "block" and self.refine_applies(name):
            return "block_total"
        return compare

    def _joint(self) -> bool:
        """SparseGPT + quantization runs as one sweep (prune and quantize, compensating both; SparseGPT Sec. 3.5)."""
        return self.quantizer is not None and self.recipe.method == "sparsegpt" and self.recipe.quant.method == "gptq"

    def _earlier_mask(self, name: str, W: Tensor, record: dict) -> Tensor | None:
        from .earlier_zeros import earlier_mask

        mask = earlier_mask(W)
        if mask is not None and not self.quantizer.meta.get("takes_mask", True):
            self.report.filled.append(name)
            return None
        record.update({} if mask is None else {"earlier_zeros": round(1 - float(mask.float().mean()), 6)})
        return mask

    def _quantize(self, name, W, stats, sparsity, mask, record):
        spec = self.recipe.quant
        if self._joint() and sparsity is not None:
            from .quant.gptq import sparsegpt_quant

            qw, info = _call_with_options(sparsegpt_quant, W, stats, sparsity, spec, options=self.options(name))
        else:
            opts = {**self.options(name), "mask": mask}
            qw, info = _call_with_options(self.quantizer.fn, W, stats, spec, options=opts)
        record.update(info)
        record["quant"] = str(spec)
        self.report.quantized[name] = qw
        return qw.dequantize(), (qw.mask if qw.mask is not None else mask)


def _closer_group(widths: set[int], sparsity: Groups) -> int | None:
    """The largest group size below ``sparsity.size`` that divides every group-sparse layer's width and drops whole
    groups to within a point of the fraction in each; even and at least 4 (the packed format stores nibble pairs,
    and smaller groups are hardly groups); None when there is none."""
    for size in range(sparsity.size - 1, 3, -1):
        if size % 2:
            continue
        if all(w % size == 0 and not _group_shortfall("", w, Groups(size, sparsity.fraction)) for w in widths):
            return size
    return None


def _group_shortfall(name: str, in_features: int, sparsity: Sparsity) -> list[tuple[str, int, int, Groups]]:
    """``[(name, groups per row, groups dropped, sparsity)]`` when dropping whole groups falls short of the fraction
    by more than a point (e.g. 4 of 9 groups, 0.444 for 0.5); rounding down one weight in a row never does."""
    if not isinstance(sparsity, Groups):
        return []
    n = in_features // sparsity.size
    dropped = int(n * sparsity.fraction)
    return [(name, n, dropped, sparsity)] if dropped / n < sparsity.fraction - 0.01 else []


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
    from .formats import float_dtype
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
            kept_dense[f"{path}.{index}.{weight}"] = _router_reason(owner) or "not a Linear (kept dense)"
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
    plan.scale_dtype = float_dtype(storage_dtype(model))  # one model whatever the format: see uniform.stored_scale
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
              progress: bool = True, forward_dtype: torch.dtype | None = None, captured=None) -> Report:
    """Compress ``model`` in place following ``recipe``.

    ``calib``: a ``CalibrationSet`` (``llmprune.calibration_windows``), or None when no module needs statistics.
    ``device``: where each layer is compressed (the model stays where it is; one layer at a time moves).
    ``batch_size``: calibration windows per forward. ``progress``: a bar over the layers. ``forward_dtype`` runs the
    calibration forwards in another dtype (statistics stay float32; see ``engine.sequential.run_sequential_``).
    ``captured``: layer-0 inputs already captured from ``calib`` on this dense model
    (``engine.capture.capture_inputs``), reused instead of a new capture — a sweep captures once.
    A ``torch.compile`` wrapper is compressed through the module it wraps (names stay the model's), and the
    forwards run in eval mode (no dropout), the model's mode restored after. Returns the ``Report`` (per-layer
    records, quantized codes, timings); a user mistake raises ``UserInputError`` before any weight changes."""
    model = getattr(model, "_orig_mod", model)  # torch.compile's OptimizedModule: the same parameters
    refuse_merged(model, "compress")
    if recipe.sparsity is None and recipe.quant is None and not recipe.overrides:
        raise UserInputError("nothing to do: the recipe has no sparsity and no quant (e.g. "
                             "Recipe(method='wanda', sparsity=parse_sparsity('2:4')))")
    _check_run(model, calib, device, batch_size)
    was_training = model.training
    model.eval()
    try:
        return _compress(model, recipe, calib, device, batch_size, progress, forward_dtype, captured)
    finally:
        model.train(was_training)


def _compress(model, recipe, calib, device, batch_size, progress, forward_dtype, captured) -> Report:
    from .engine.sequential import run_sequential_, run_without_calibration_

    start = time.perf_counter()
    plan = build_plan(model, recipe)
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
    plan.report.timings = {"compress_seconds": round(time.perf_counter() - start, 3),
                           **{k: v for k, v in (engine_info or {}).items() if isinstance(v, (int, float))}}
    return plan.report
