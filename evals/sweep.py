"""Essential-sparsity sweeps: prune at every level, measure perplexity, find where quality starts to fall fast.

Why: "essential sparsity" (Jaiswal et al. 2023, arXiv:2306.03805) is the sharp turning point beyond which quality
drops much faster with sparsity; below it one-shot pruning is nearly free. We find it with a stated rule:

Knee rule (``margin``): the *knee* of a method is the first unstructured level whose perplexity exceeds the dense
perplexity by more than ``margin`` (default 10%, relative); the *essential sparsity* (the recommendation) is the level
just before it, i.e. the highest level such that it and every lower level stay within the margin. N:M levels are
reported against the same margin but do not enter the curve.

Reuse across levels (each level starts from the dense weights, restored from one CPU copy of the state dict):

- always: the loaded model and tokenizer, the evaluation text, the dense perplexity (computed once);
- the calibration windows (token ids, ``--calib self`` generated once, by the dense model), shared by every method
  and level; magnitude computes no statistics at all, so without a data-aware method none are drawn;
- layer 0's captured inputs (embeddings and layer arguments), when ``compress_`` accepts ``captured=``.

Why no more: Wanda, SparseGPT and DSnoT compress sequentially, as their reference code does; layer k's statistics
are measured on the outputs of layers 0..k−1 *already compressed at this level*, so they differ between levels. Only
layer 0's statistics are level-independent, and recomputing them costs one layer's forward (1/L of a level).
"""
from __future__ import annotations

import inspect
import math
import time
from dataclasses import asdict, dataclass, field, replace
from functools import partial

import torch

from llmprune.errors import UserInputError
from llmprune.recipe import NM, Calibration, Recipe, Sparsity

from .sweep_levels import parse_variant


@dataclass(frozen=True)
class SweepConfig:
    """Everything a sweep does besides the model: variants ('wanda', 'wanda+dsnot'), levels, data, knee margin."""

    variants: tuple[str, ...]
    levels: tuple[Sparsity, ...]
    refine: str | None = None
    options: tuple[tuple[str, object], ...] = ()
    calibration: Calibration = field(default_factory=Calibration)
    eval_dataset: str = "wikitext2"
    eval_seqlen: int | None = None
    eval_max_windows: int | None = None  # None: the whole text (papers)
    knee_margin: float = 0.1
    device: str = "cpu"
    batch_size: int = 8

    def recipes(self) -> list[tuple[str, Recipe]]:
        """(variant label, recipe) for every variant × level, parsed and checked before any work."""
        from llmprune.options import INTERNAL_OPTIONS, accepted_options

        out, used = [], set()
        for text in self.variants:
            method, refine = parse_variant(text, self.refine)
            label = method + (f"+{refine}" if refine else "")
            accepted = accepted_options(Recipe(method=method, refine=refine)) | INTERNAL_OPTIONS
            options = tuple((k, v) for k, v in self.options if k in accepted)  # each variant takes its own
            used |= {k for k, _ in options}
            for level in self.levels:
                recipe = Recipe(method=method, sparsity=level, refine=refine, options=options)
                if refine:
                    from llmprune.refine import REFINERS

                    check = REFINERS.get(refine).meta.get("check")
                    if check is not None:
                        check(recipe)
                out.append((label, recipe))
        unused = sorted({k for k, _ in self.options} - used)
        if unused:
            raise UserInputError(f"--option {unused[0]}: no variant of this sweep takes it; check the name")
        return out


@dataclass
class SweepPoint:
    variant: str
    sparsity: str
    fraction: float
    pattern: str  # 'unstructured' or 'nm'
    ppl: float
    achieved_sparsity: float
    compress_seconds: float
    eval_seconds: float
    error: str | None = None  # a level that failed: recorded, left out of the knees and the plot, the sweep goes on


@dataclass
class SweepResult:
    model: str
    dataset: str
    dense_ppl: float
    margin: float
    points: list[SweepPoint] = field(default_factory=list)
    reuse: dict = field(default_factory=dict)
    calibration: dict | None = None
    protocol: dict | None = None  # perplexity settings: dataset, seqlen, max_windows (None = every window)

    def knees(self) -> dict[str, dict]:
        return {v: knee(self.points_of(v), self.dense_ppl, self.margin) for v in self.variants()}

    def variants(self) -> list[str]:
        return list(dict.fromkeys(p.variant for p in self.points))

    def points_of(self, variant: str) -> list[SweepPoint]:
        """The variant's measured points (failed levels excluded)."""
        return [p for p in self.points if p.variant == variant and p.error is None]

    def failures(self) -> list[SweepPoint]:
        return [p for p in self.points if p.error is not None]

    def to_dict(self) -> dict:
        return {"model": self.model, "dataset": self.dataset, "dense_ppl": self.dense_ppl,
                "knee_rule": f"first unstructured level with ppl > (1 + {self.margin:g}) x dense; essential "
                             "sparsity = the level before it", "knee_margin": self.margin,
                "knees": self.knees(), "points": [asdict(p) for p in self.points], "reuse": self.reuse,
                "calibration": self.calibration, "protocol": self.protocol}


def knee(points: list[SweepPoint], dense_ppl: float, margin: float) -> dict:
    """The margin rule (module docstring) over one variant's unstructured points, sorted by sparsity."""
    limit = dense_ppl * (1 + margin)
    curve = sorted((p for p in points if p.pattern == "unstructured"), key=lambda p: p.fraction)
    essential, first_over = None, None
    for point in curve:
        if not point.ppl <= limit:  # NaN/inf perplexity counts as over the margin
            first_over = point
            break
        essential = point
    nm_ok = [p.sparsity for p in points if p.pattern == "nm" and p.ppl <= limit]
    return {"essential_sparsity": essential.fraction if essential else None,
            "essential_ppl": essential.ppl if essential else None,
            "knee_sparsity": first_over.fraction if first_over else None,
            "knee_ppl": first_over.ppl if first_over else None, "ppl_limit": limit, "nm_within_margin": nm_ok}


@dataclass
class SweepHooks:
    """The sweep's collaborators, injectable for tests: ``compress(model, recipe, calib, *, device, batch_size,
    progress) -> Report``, ``evaluate(model) -> ppl``, ``calibrate(model, tokenizer, config) -> CalibrationSet``."""

    compress: object = None
    evaluate: object = None
    calibrate: object = None
    log: object = print


def _evaluator(tokenizer, config: SweepConfig, progress: bool = True):
    """Perplexity of the model as it is now, on the evaluation text loaded once (``progress``: a bar per
    evaluation, minutes each on a real model)."""
    from llmprune.evals.perplexity import default_seqlen, load_eval_text, perplexity

    text = load_eval_text(config.eval_dataset)

    def evaluate(model) -> float:
        seqlen = config.eval_seqlen or default_seqlen(model, cap=2048)
        return float(perplexity(model, tokenizer, text.text, seqlen=seqlen, device=config.device, batch_size=1,
                                progress=progress, dataset=text.name, max_windows=config.eval_max_windows).ppl)

    return evaluate, text.name


def _windows(model, tokenizer, config: SweepConfig, *, progress: bool = True):
    """The default ``calibrate`` hook; ``progress``: the bar while ``--calib self`` generates its windows."""
    from llmprune.data.calibration import calibration_windows

    return calibration_windows(tokenizer, config.calibration, model=model, progress=progress)


def _capture_kwargs(compress, model, calib, config: SweepConfig) -> dict:
    """Layer-0 inputs captured once, when the compressor accepts them (``captured=``)."""
    if calib is None or "captured" not in inspect.signature(compress).parameters:
        return {}
    from llmprune.engine.capture import capture_inputs

    return {"captured": capture_inputs(model, calib.ids, device=config.device, batch_size=config.batch_size)}


def run_sweep(model, tokenizer, config: SweepConfig, *, model_name: str, progress: bool = True,
              hooks: SweepHooks | None = None) -> SweepResult:
    """Prune ``model`` at every level of every variant, evaluate, restore the dense weights; returns the results.
    Defaults: ``llmprune.compress.compress_``, perplexity on ``config.eval_dataset``, ``calibration_windows``."""
    from llmprune.compress import build_plan, compress_, needs_calibration

    from llmprune.model.layers import check_seqlen

    hooks = hooks or SweepHooks()
    recipes = config.recipes()
    for _, recipe in recipes:
        build_plan(model, recipe)  # shape checks for every level before any calibration
    if config.eval_seqlen is not None:
        check_seqlen(model, config.eval_seqlen, "--ppl-seqlen")
    calibrated = any(needs_calibration(model, recipe) for _, recipe in recipes)  # magnitude alone draws nothing
    if calibrated and hooks.calibrate is None:  # the default hook draws windows of this length
        check_seqlen(model, config.calibration.seqlen, "--seqlen")
    compress, log = hooks.compress or compress_, hooks.log
    evaluate, dataset = ((hooks.evaluate, config.eval_dataset) if hooks.evaluate else
                         _evaluator(tokenizer, config, progress))
    dense_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    dense_ppl = float(evaluate(model))
    log(f"dense: ppl {dense_ppl:.4f}")
    calib = None
    if calibrated:
        calibrate = hooks.calibrate or partial(_windows, progress=progress)  # --quiet: no self-generation bar
        calib = calibrate(model, tokenizer, config)
    extra = _capture_kwargs(compress, model, calib, config)
    name = model_name + (f" ({config.eval_max_windows} ppl windows)" if config.eval_max_windows else "")
    result = SweepResult(name, dataset, dense_ppl, config.knee_margin,
                         calibration=None if calib is None else {**asdict(config.calibration), "sha256": calib.sha256})
    from llmprune.evals.perplexity import default_seqlen

    result.protocol = {"dataset": dataset, "seqlen": config.eval_seqlen or default_seqlen(model, cap=2048),
                       "max_windows": config.eval_max_windows}
    result.reuse = {"calibration_windows": calib is not None, "layer0_inputs": bool(extra),
                    "dense_state_dict_cpu_copy": True, "dense_ppl_once": True, "eval_text_once": True}
    try:
        for label, recipe in recipes:
            try:
                point = _level(model, recipe, label, calib, (compress, evaluate, extra), config, progress)
            except Exception as exc:  # one failing level must not throw away the levels measured before it
                point = _failed(label, recipe.sparsity, exc)
                log(f"{label} {point.sparsity}: FAILED ({point.error})")
            else:
                log(f"{label} {point.sparsity}: ppl {point.ppl:.4f} (compress {point.compress_seconds:.0f} s, "
                    f"eval {point.eval_seconds:.0f} s)")
            result.points.append(point)
            model.load_state_dict(dense_state)
    finally:
        model.load_state_dict(dense_state)
    return result


def _pattern(level: Sparsity) -> str:
    return "nm" if isinstance(level, NM) else "unstructured"


def _failed(label: str, level: Sparsity, exc: Exception) -> SweepPoint:
    message = (str(exc).strip().splitlines() or [""])[0]
    return SweepPoint(label, str(level), float(level.fraction), _pattern(level), math.nan, math.nan, 0.0, 0.0,
                      error=f"{type(exc).__name__}: {message}")


def _level(model, recipe: Recipe, label, calib, tools, config, progress) -> SweepPoint:
    from llmprune.compress import needs_calibration

    compress, evaluate, extra = tools
    t0 = time.perf_counter()
    use = calib if needs_calibration(model, recipe) else None
    kwargs = {}
    if use is not None and extra:  # the engine replaces the hidden states as it goes: give it its own list
        kwargs["captured"] = replace(extra["captured"], hidden=list(extra["captured"].hidden))
    report = compress(model, recipe, use, device=config.device, batch_size=config.batch_size, progress=progress,
                      **kwargs)
    t1 = time.perf_counter()
    with torch.no_grad():
        ppl = evaluate(model)
    t2 = time.perf_counter()
    level = recipe.sparsity
    return SweepPoint(label, str(level), float(level.fraction), _pattern(level), float(ppl),
                      float(report.achieved_sparsity()), round(t1 - t0, 3), round(t2 - t1, 3))


def write_sweep(result: SweepResult, out_dir, *, force: bool = False) -> list[str]:
    """sweep.json, sweep.csv and sweep.png into ``out_dir``, atomically (all three or nothing)."""
    import csv
    import json

    from llmprune.atomic import atomic_dir

    from .sweep_plot import plot_sweep

    names = ["sweep.json", "sweep.csv", "sweep.png"]
    with atomic_dir(out_dir, force=force) as tmp:
        (tmp / names[0]).write_text(json.dumps(result.to_dict(), indent=2, allow_nan=True) + "\n")
        limit = result.dense_ppl * (1 + result.margin)
        with open(tmp / names[1], "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["variant", "sparsity", "fraction", "pattern", "ppl", "dense_ppl", "within_margin",
                             "achieved_sparsity", "compress_seconds", "eval_seconds", "error"])
            for p in result.points:
                writer.writerow([p.variant, p.sparsity, p.fraction, p.pattern, p.ppl, result.dense_ppl,
                                 p.ppl <= limit, p.achieved_sparsity, p.compress_seconds, p.eval_seconds,
                                 p.error or ""])
        plot_sweep(result, tmp / names[2])
    return names
