"""``Plan``: a recipe resolved per module (which Linears, which pattern, what statistics each needs) and the step
that turns one Linear's weight and statistics into its compressed weight: prune, refine, quantize, verify, record.
``compress.build_plan`` makes one; the engine calls it layer by layer."""
from __future__ import annotations

import re
import time
import warnings

import torch
from torch import Tensor

from .errors import UserInputError
from .masks import check_shape, verify_pattern
from .options import call_with_options, typed_options
from .recipe import Groups, Recipe, Sparsity
from .report import Report
from .types import Pruned, Stats

ROUTERS = ("gate", "router", "shared_expert_gate")  # MoE routing Linears (not gate_proj)


def router_reason(name: str) -> str | None:
    """MoE routers stay dense, as in llm-compressor's MoE recipes (``re:.*mlp.gate$``): they are a sliver of the
    weights, and an error in them sends tokens to the wrong experts. A router is a module named ``gate``/``router``
    (not ``gate_proj``) or anything inside one (HunYuan's ``mlp.gate.wg``)."""
    return "MoE router (kept dense)" if set(name.split(".")) & set(ROUTERS) else None


class Plan:
    """The recipe resolved per module: which Linears are compressed, with which pattern, and what they need.

    It is the engine's ``LinearTask``: ``needs(name)`` and ``__call__(name, weight, stats) -> new weight``.
    """

    def __init__(self, recipe: Recipe, modules: dict[str, torch.nn.Module]):
        from .prune import METHODS

        self.recipe = recipe
        self.calib_seqlen: int | None = None  # DSnoT scales its threshold by the calibration sequence length
        self.storage_dtype: str | None = None  # packed values' and scales' dtype name (build_plan: the model's)
        self.pack_format: str | None = None  # pack each finished layer into this format (compress_(pack=...))
        self.spill = None  # an engine.spill.Spill: a dense output's finished weights go to disk-backed memory
        self.method = METHODS.get(recipe.method)
        self.recipe = recipe = typed_options(recipe)
        self.refiner = self._refiner(recipe)
        self.quantizer = self._quantizer(recipe)
        self.report = Report()
        self.targets: dict[str, Sparsity | None] = {}
        moe = any(".experts." in name for name in modules)
        for name, module in modules.items():
            reason = (moe and router_reason(name)) or self._ignored(name)
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
    def check_steps(recipe: Recipe) -> None:
        """The recipe's options and its refiner's own checks, which need no model (``llmprune compress`` runs them
        before loading one)."""
        Plan._refiner(typed_options(recipe))

    @staticmethod
    def _refiner(recipe: Recipe):
        """The refiner's registry entry, after its ``check`` of the (typed) recipe."""
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

    @property
    def scale_dtype(self) -> torch.dtype | None:
        """The dtype quantization scales are rounded to as they will be stored (None: kept exact)."""
        from .formats import float_dtype

        return None if self.storage_dtype is None else float_dtype(self.storage_dtype)

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
            pruned: Pruned = call_with_options(self.method.fn, W, stats, sparsity, options=self.options(name))
            if self.refine_applies(name):
                pruned = call_with_options(self.refiner.fn, W, pruned, stats, sparsity, options=self.options(name))
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

    def layer_done(self, layer: torch.nn.Module, prefix: str, names: list[str]) -> None:
        """With ``pack_format``: the finished layer's compressed Linears become ``PackedLinear`` modules now, from
        their held codes (or their pruned weight), so a finished layer keeps its packed bytes instead of a dense
        weight (``Report.quantized`` still holds the codes, for an export). With ``spill`` (dense output): their
        weights move to disk-backed memory."""
        if self.pack_format is None:
            if self.spill is not None:
                for name in names:
                    if name in self.report.records:
                        self.spill.move_(layer.get_submodule(name[len(prefix) + 1:]))
            return
        from .packed_linear import set_module_
        from .packing import packed_compressed

        for name in names:
            if name in self.report.records:
                relative = name[len(prefix) + 1:]
                set_module_(layer, relative, packed_compressed(name, layer.get_submodule(relative), self.report,
                                                               self.pack_format, self.storage_dtype))

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

            qw, info = call_with_options(sparsegpt_quant, W, stats, sparsity, spec, options=self.options(name))
        else:
            opts = {**self.options(name), "mask": mask}
            qw, info = call_with_options(self.quantizer.fn, W, stats, spec, options=opts)
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
