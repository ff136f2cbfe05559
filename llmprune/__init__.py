"""llmprune: post-training compression for Hugging Face causal LMs.

Public API (nothing heavy is imported until used)::

    import llmprune
    loaded = llmprune.resolve("smollm2-135m")
    recipe = llmprune.Recipe(method="wanda", sparsity=llmprune.parse_sparsity("2:4"))
    report = llmprune.compress_(loaded.model, recipe, calib)
    model, tokenizer, manifest = llmprune.load("out/dir")
    llmprune.save(loaded.model, "out/packed", report=report, format="sparse24", recipe=recipe)

Importing llmprune also lets ``transformers.AutoModelForCausalLM.from_pretrained`` load packed folders
(``llmprune.hf_quantizer``).
"""
from __future__ import annotations

__version__ = "0.1.0"

from .errors import LlmpruneError, UserInputError  # noqa: E402  (cheap, no torch-heavy imports)
from .recipe import NM, Calibration, Groups, QuantSpec, Recipe, Unstructured, parse_quant, parse_sparsity  # noqa: E402
from .after_import import call_after_import  # noqa: E402


def _teach_transformers():
    """``AutoModelForCausalLM.from_pretrained(packed folder)`` works once llmprune is imported: importing
    ``hf_quantizer`` registers it (when that import is what brought transformers in, it finishes registering)."""
    import importlib

    importlib.import_module("llmprune.hf_quantizer")


call_after_import("transformers.quantizers.auto", _teach_transformers)


def compress_(model, recipe: "Recipe", calib=None, **kwargs):
    """Compress ``model`` in place following ``recipe``; ``calib`` is a ``CalibrationSet`` from
    ``calibration_windows`` (None for magnitude / round-to-nearest). Keywords: ``device``, ``batch_size``,
    ``progress``, ``forward_dtype``. Returns the ``Report``; raises ``UserInputError`` for a mistake, before any
    weight changes (``llmprune.compress.compress_`` says more)."""
    from .compress import compress_ as run

    return run(model, recipe, calib, **kwargs)


def resolve(spec, **kwargs):
    """Load a model and tokenizer from an HF folder, a .gguf file, a Hub id or an alias."""
    from .model import resolve as run

    return run(spec, **kwargs)


def load(path, **kwargs):
    """Load an llmprune checkpoint (packed modules included): returns (model, tokenizer, manifest)."""
    from .checkpoint import load as run

    return run(path, **kwargs)


def save(model, out_dir, **kwargs):
    """Write ``model`` with its ``llmprune.json`` manifest, atomically; returns the folder. After ``compress_``,
    ``report=``, ``format=`` (e.g. "sparse24_int4") and ``recipe=`` pack it as ``llmprune compress --format`` does;
    also ``tokenizer=``, ``force=`` (``llmprune.checkpoint.save``)."""
    from .checkpoint import save as run

    return run(model, out_dir, **kwargs)


def merge_projections(model, **kwargs):
    """Run sibling q/k/v and gate/up projections as one matmul each at inference (``llmprune.merged_projections``)."""
    from .merged_projections import merge_projections as run

    return run(model, **kwargs)


def calibration_windows(tokenizer, calibration: "Calibration", **kwargs):
    """The ``CalibrationSet`` (token ids ``[nsamples, seqlen]`` and their sha256) that ``calibration`` names, drawn
    as the papers' reference code draws them; ``model=`` is needed for ``source="self"``."""
    from .data.calibration import calibration_windows as run

    return run(tokenizer, calibration, **kwargs)


def method_names() -> list[str]:
    """The pruning methods ``Recipe(method=...)`` accepts."""
    from .prune import METHODS

    return METHODS.names()


def format_names() -> list[str]:
    """The storage formats ``save(format=...)`` and ``llmprune compress --format`` accept."""
    from .formats import FORMATS

    return FORMATS.names()


__all__ = ["__version__", "compress_", "resolve", "load", "save", "calibration_windows", "merge_projections",
           "method_names", "format_names", "Recipe", "Calibration", "NM", "Groups", "Unstructured", "QuantSpec",
           "parse_sparsity", "parse_quant", "LlmpruneError", "UserInputError"]
