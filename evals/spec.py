"""``SPEC.yaml`` of ``llmprune batch``: models x recipes x evaluations, parsed and checked before anything runs.

Example::

    name: smollm2-grid
    models: [smollm2-135m]
    calibration: {source: c4, nsamples: 32, seqlen: 512, seed: 0}
    recipes:
      - {method: [magnitude, wanda, sparsegpt], sparsity: [0.5, "2:4"]}   # lists expand into a grid
      - {method: wanda, sparsity: "2:4", refine: dsnot}
      - {method: sparsegpt, sparsity: "2:4", quant: w4g16, format: sparse24_int4}
    evaluations:
      perplexity: [wikitext2]
      seqlen: 512                 # perplexity window (default: the model's context, capped at 2048)
      max_windows: 16             # score only the first 16 windows (quick look; default: the whole text)
      zeroshot: [arc_easy, piqa]
      limit: 100                  # lm-eval examples per task
    dense: true                   # evaluate the uncompressed model too (first row of the table); default true
    device: cpu
    dtype: float32

Recipe keys: ``method sparsity refine quant quantizer format damp block ignore options``; a list under ``method``,
``sparsity``, ``refine``, ``quant`` or ``format`` expands into one variant per combination. Every mistake is a
one-line ``UserInputError`` naming the file, the line and the key (e.g. ``SPEC.yaml:7: recipes[1].sparsity: ...``).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

from llmprune.errors import UserInputError

from .spec_yaml import KeyLines, read_spec

TOP_KEYS = ("name", "models", "calibration", "recipes", "evaluations", "dense", "device", "dtype", "output", "cache")
RECIPE_KEYS = ("method", "sparsity", "refine", "quant", "quantizer", "format", "damp", "block", "ignore", "options",
               "experts")
GRID_KEYS = ("method", "sparsity", "refine", "quant", "format")
EVAL_KEYS = ("perplexity", "seqlen", "max_windows", "zeroshot", "limit", "num_fewshot", "batch_size")
CALIB_KEYS = ("source", "nsamples", "seqlen", "seed")


@dataclass(frozen=True)
class Variant:
    """One recipe of the grid (``recipe`` None = the dense model), with a short human label."""

    label: str
    recipe: dict | None = None

    @property
    def dense(self) -> bool:
        return self.recipe is None


@dataclass(frozen=True)
class Evaluations:
    perplexity: tuple[str, ...] = ()
    seqlen: int | None = None
    max_windows: int | None = None
    zeroshot: tuple[str, ...] = ()
    limit: float | None = None
    num_fewshot: int | None = None
    batch_size: int = 1

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class Cell:
    model: str
    variant: Variant


@dataclass(frozen=True)
class BatchSpec:
    path: Path
    name: str
    models: tuple[str, ...]
    variants: tuple[Variant, ...]
    evaluations: Evaluations
    calibration: dict = field(default_factory=dict)
    dense: bool = True
    device: str = "cpu"
    dtype: str = "float32"
    output: Path | None = None
    cache: Path | None = None

    def cells(self) -> list[Cell]:
        """Per model: the dense cell first (when enabled), then every variant, in spec order."""
        head = (Variant("dense"),) if self.dense else ()
        return [Cell(m, v) for m in self.models for v in head + self.variants]


def _check_keys(data: dict, allowed, where: KeyLines, prefix: str) -> None:
    import difflib

    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"allowed: {', '.join(allowed)}"
            raise where.error(f"{prefix}{key}", f"unknown key; {hint}")


def _names(value, where: KeyLines, key: str, required: bool = False) -> tuple[str, ...]:
    items = [value] if isinstance(value, (str, int, float)) else value
    if value is None and not required:
        return ()
    if not isinstance(items, list) or not items or not all(isinstance(v, (str, int, float)) for v in items):
        raise where.error(key, "give a name or a non-empty list of names")
    return tuple(str(v) for v in items)


def _checked(where: KeyLines, key: str, fn, *args):
    """Run a parser/registry lookup; its one-line UserInputError gets the file, line and key in front."""
    try:
        return fn(*args)
    except UserInputError as exc:
        raise where.error(key, str(exc)) from None


def _label(recipe: dict) -> str:
    sparsity, quant = recipe.get("sparsity") or "dense", recipe.get("quant")
    quant_only = bool(quant) and sparsity == "dense"  # the pruning method plays no part: name the quantizer instead
    parts = [] if quant_only else [str(recipe["method"]), str(sparsity)]
    if recipe.get("refine"):
        parts.append(f"+{recipe['refine']}")
    if quant:
        parts.append(str(quant))
        quantizer = recipe.get("quantizer") or "gptq"
        if quant_only or quantizer != "gptq":
            parts.append(quantizer)
    if recipe.get("format", "dense") != "dense":
        parts.append(f"[{recipe['format']}]")
    parts += [f"{k}={recipe[k]}" for k in ("damp", "block", "ignore", "options") if recipe.get(k) is not None]
    return " ".join(parts)


def _validate_recipe(recipe: dict, where: KeyLines, key: str) -> dict:
    from llmprune.compress import check_format
    from llmprune.formats import FORMATS
    from llmprune.prune import METHODS
    from llmprune.recipe import parse_quant, parse_sparsity

    _checked(where, f"{key}.method", METHODS.get, recipe["method"])
    if recipe.get("sparsity") is not None:
        recipe["sparsity"] = str(_checked(where, f"{key}.sparsity", parse_sparsity, str(recipe["sparsity"])))
    if recipe.get("refine") is not None:
        from llmprune.refine import REFINERS

        _checked(where, f"{key}.refine", REFINERS.get, str(recipe["refine"]))
    if recipe.get("quant") is not None:
        _checked(where, f"{key}.quant", parse_quant, str(recipe["quant"]))
        from llmprune.quant import QUANTIZERS

        _checked(where, f"{key}.quantizer", QUANTIZERS.get, str(recipe.get("quantizer") or "gptq"))
    recipe["format"] = str(recipe.get("format") or "dense")
    _checked(where, f"{key}.format", FORMATS.get, recipe["format"])
    if recipe.get("sparsity") is None and recipe.get("quant") is None:
        raise where.error(key, "nothing to do: give sparsity and/or quant")
    if not isinstance(recipe.get("options") or {}, dict):
        raise where.error(f"{key}.options", "a mapping of option names to values, e.g. {max_cycles: 50}")
    parsed = _checked(where, key, recipe_from_dict, recipe)  # damp, block, ignore patterns: the Recipe's checks
    from llmprune.plan import Plan

    _checked(where, f"{key}.options", Plan.check_steps, parsed)  # names and values, as the compress job reads them
    _checked(where, f"{key}.format", check_format, parsed, recipe["format"])  # as the compress job checks it
    return recipe


def _expand(entry, where: KeyLines, key: str) -> list[Variant]:
    if not isinstance(entry, dict):
        raise where.error(key, "each recipe is a mapping, e.g. {method: wanda, sparsity: 0.5}")
    _check_keys(entry, RECIPE_KEYS, where, f"{key}.")
    if "method" not in entry:
        raise where.error(key, "missing 'method' (e.g. method: wanda)")
    axes = {k: (entry[k] if isinstance(entry[k], list) else [entry[k]]) for k in GRID_KEYS if k in entry}
    for k, values in axes.items():
        if not values:
            raise where.error(f"{key}.{k}", "empty list; give at least one value")
    fixed = {k: v for k, v in entry.items() if k not in axes}
    combos = list(itertools.product(*axes.values()))
    outcomes = [_outcome({**fixed, **dict(zip(axes, combo))}, where, key) for combo in combos]  # each checked once
    for combo, outcome in zip(combos, outcomes):
        if isinstance(outcome, UserInputError):
            if not any(isinstance(other, dict) for other in outcomes):
                raise outcome  # no combination runs: the grid is not the problem
            point = ", ".join(f"{k}: {v}" for k, v in zip(axes, combo) if len(axes[k]) > 1)
            raise UserInputError(f"{outcome} (in the grid's combination {point}; a grid runs every combination, so "
                                 f"write the ones that fit as separate recipes)") from None
    return [Variant(_label(recipe), recipe) for recipe in outcomes]


def _outcome(recipe: dict, where: KeyLines, key: str) -> dict | UserInputError:
    """The validated recipe, or the error it fails with: a grid's error depends on whether other combinations run."""
    try:
        return _validate_recipe(recipe, where, key)
    except UserInputError as exc:
        return exc


def _evaluations(data, where: KeyLines) -> Evaluations:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise where.error("evaluations", "a mapping with perplexity: [...] and/or zeroshot: [...]")
    _check_keys(data, EVAL_KEYS, where, "evaluations.")
    evals = Evaluations(perplexity=_names(data.get("perplexity"), where, "evaluations.perplexity"),
                        seqlen=_int(data.get("seqlen"), where, "evaluations.seqlen", 2, optional=True),
                        max_windows=_int(data.get("max_windows"), where, "evaluations.max_windows", 1, optional=True),
                        zeroshot=_names(data.get("zeroshot"), where, "evaluations.zeroshot"),
                        limit=data.get("limit"),
                        num_fewshot=_int(data.get("num_fewshot"), where, "evaluations.num_fewshot", 0, optional=True),
                        batch_size=_int(data.get("batch_size", 1), where, "evaluations.batch_size", 1))
    if evals.limit is not None and (isinstance(evals.limit, bool) or not isinstance(evals.limit, (int, float))
                                    or evals.limit <= 0):
        raise where.error("evaluations.limit", "a positive number of examples (or a fraction < 1)")
    if not evals.perplexity and not evals.zeroshot:
        raise where.error("evaluations", "nothing to evaluate: give perplexity: [wikitext2] and/or zeroshot: [...]")
    return evals


def _int(value, where: KeyLines, key: str, minimum: int, optional: bool = False):
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise where.error(key, f"a whole number >= {minimum}")
    return value


def _calibration(data, where: KeyLines) -> dict:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise where.error("calibration", "a mapping, e.g. {source: c4, nsamples: 128, seqlen: 2048, seed: 0}")
    _check_keys(data, CALIB_KEYS, where, "calibration.")
    for key, least in (("nsamples", 1), ("seqlen", 2), ("seed", 0)):  # as recipe.Calibration checks them
        if key in data:
            _int(data[key], where, f"calibration.{key}", least)
    return dict(data)


def recipe_from_dict(recipe: dict):
    """The ``Recipe`` a spec variant describes (spec.py validated every field already)."""
    from llmprune.recipe import Recipe, parse_quant, parse_sparsity

    quant = parse_quant(recipe["quant"], method=recipe.get("quantizer") or "gptq") if recipe.get("quant") else None
    extra = {k: recipe[k] for k in ("damp", "block", "experts") if recipe.get(k) is not None}
    return Recipe(method=recipe["method"], sparsity=parse_sparsity(recipe["sparsity"]) if recipe.get("sparsity")
                  else None, quant=quant, refine=recipe.get("refine"), ignore=recipe.get("ignore") or (),
                  options=tuple(sorted((recipe.get("options") or {}).items())), **extra)


def load_spec(path) -> BatchSpec:
    """Parse and check ``path``; every variant is validated (methods, patterns, formats) before any work starts."""
    path = Path(path)
    data, where = read_spec(path)
    _check_keys(data, TOP_KEYS, where, "")
    models = _names(data.get("models"), where, "models", required=True)
    recipes = data.get("recipes") or []
    if not isinstance(recipes, list):
        raise where.error("recipes", "a list of recipes, e.g. - {method: wanda, sparsity: 0.5}")
    variants = [v for i, entry in enumerate(recipes) for v in _expand(entry, where, f"recipes[{i}]")]
    dense = data.get("dense", True)
    if not isinstance(dense, bool):
        raise where.error("dense", "true or false")
    if not variants and not dense:
        raise where.error("recipes", "no cells to run: add recipes or set dense: true")
    labels = [v.label for v in variants]
    duplicate = next((label for label in labels if labels.count(label) > 1), None)
    if duplicate:
        raise where.error("recipes", f"variant '{duplicate}' appears twice; remove the repeat")
    from llmprune.pipeline import DEVICE_NAME, DTYPES

    dtype = str(data.get("dtype", "float32"))
    if dtype not in DTYPES:
        raise where.error("dtype", f"{dtype!r}: choose float32, float16 or bfloat16")
    device = str(data.get("device", "cpu"))
    if not DEVICE_NAME.fullmatch(device):
        raise where.error("device", f"{device!r}: choose cpu or cuda (cuda:N for another GPU)")
    return BatchSpec(path=path, name=str(data.get("name") or path.stem), models=models, variants=tuple(variants),
                     evaluations=_evaluations(data.get("evaluations"), where),
                     calibration=_calibration(data.get("calibration"), where), dense=dense,
                     device=device, dtype=dtype,
                     output=_folder(data.get("output"), where, "output"),
                     cache=_folder(data.get("cache"), where, "cache"))


def _folder(value, where: KeyLines, key: str) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise where.error(key, "a folder path, e.g. results/grid")
    return Path(value).expanduser()
