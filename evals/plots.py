"""The batch report: ``results.jsonl``, a markdown table with relative changes against dense, and PNG plots.

Table (``results.md``): one section per model; rows are the dense model first, then every variant in spec order;
columns are achieved sparsity, stored bits/parameter, perplexity per set, accuracy per task and the mean accuracy.
Each metric of a variant carries its relative change against the same model's dense row, e.g. ``14.20 (+21.3%)``.
Failed cells appear as rows with their error.

Plots (``plots/``; matplotlib with the Agg backend, imported inside the functions so ``import llmprune`` never pulls
it in): per model and perplexity set, perplexity vs achieved sparsity with one line per method (method, refinement,
quantization and format; dense as a dashed line); per model, zero-shot mean accuracy vs stored bits per parameter.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path


_SIZES = ("sparsity", "bits", "qbits")


def _columns(rows) -> list[str]:
    keys = {k for r in rows for k, v in r.metrics.items() if v is not None}
    ppl = sorted(k for k in keys if k.startswith("ppl:"))
    acc = sorted(k for k in keys if k.startswith("acc:"))
    sizes = [k for k in _SIZES if k != "qbits" or k in keys]  # sparsity and bits always, qbits when measured
    return [*sizes, *ppl, *acc, *(["mean_acc"] if "mean_acc" in keys else [])]


def _cell(value, base, key: str) -> str:
    if value is None:
        return "—"
    text = f"{value:.3f}" if key in _SIZES or not key.startswith("ppl") else f"{value:.2f}"
    if base is None or key in _SIZES or base == 0:
        return text
    return f"{text} ({(value - base) / abs(base):+.1%})"


def protocol_line(spec) -> str:
    """How the numbers were made (calibration and evaluation settings), so the table stands on its own."""
    if spec is None:
        return ""
    from llmprune.recipe import Calibration

    ev, cal = spec.evaluations, Calibration(**(spec.calibration or {}))
    parts = [f"calibration: {cal.nsamples} x {cal.seqlen} tokens of {cal.source} (seed {cal.seed})"]
    if ev.perplexity:
        windows = f", first {ev.max_windows} windows" if ev.max_windows else ", every window"
        parts.append(f"perplexity: seqlen {ev.seqlen or 'model context (<= 2048)'}{windows}, tail dropped")
    if ev.zeroshot:
        parts.append(f"zero-shot: lm-eval, {ev.num_fewshot or 0}-shot, limit {ev.limit or 'none'}")
    return "Protocol — " + "; ".join(parts) + f"; dtype {spec.dtype}."


def markdown_table(results, spec=None) -> str:
    """Per model: dense first, relative change of every metric against it (module docstring)."""
    sections = []
    for model in dict.fromkeys(r.model for r in results):
        rows = [r for r in results if r.model == model]
        rows.sort(key=lambda r: r.recipe is not None)  # stable: dense first, spec order kept
        dense = next((r for r in rows if r.recipe is None and r.status == "ok"), None)
        columns = _columns(rows)
        lines = [f"## {model}", "", "| variant | " + " | ".join(columns) + " |",
                 "|---|" + "---:|" * len(columns)]
        for r in rows:
            if r.status != "ok":
                error = (r.error or "").replace("|", "/")
                lines.append(f"| {r.label} | FAILED: {error} | " + " | ".join(["—"] * (len(columns) - 1)) + " |")
                continue
            base = dense.metrics if dense is not None and r is not dense else {}
            cells = [_cell(r.metrics.get(k), base.get(k), k) for k in columns]
            lines.append(f"| {r.label} | " + " | ".join(cells) + " |")
        sections.append("\n".join(lines))
    legend = ("sparsity: achieved fraction of zeros in the compressed Linear layers; bits: stored bits per parameter "
              "of those layers as saved (a fake-quant `dense` checkpoint stores floats); qbits: bits per parameter of "
              "the quantized representation by the quantizers' accounting (codes, statistics, masks, outliers); "
              "ppl: perplexity (lower is better); acc: lm-eval zero-shot accuracy. Parentheses: relative change "
              "against the dense row.")
    head = [line for line in ("# Batch results", protocol_line(spec), legend) if line]
    return "\n\n".join([*head, *sections]) + "\n"


def _method(r) -> str:
    recipe = r.recipe or {}
    parts = [recipe.get("method", "?")] + [str(recipe[k]) for k in ("refine", "quant") if recipe.get(k)]
    if recipe.get("format", "dense") != "dense":
        parts.append(f"[{recipe['format']}]")
    return " ".join(parts)


def _slug(text: str) -> str:
    """A file-name part: no separators, and no leading dot or dash (``./tiny`` would name a hidden file)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-").lstrip(".-") or "model"


def _model_slugs(models) -> dict[str, str]:
    """One distinct file-name part per model: ``a/b`` and ``a-b`` (or ``./tiny`` and ``tiny``) would otherwise
    write the same plot, the second silently replacing the first."""
    import hashlib

    slugs: dict[str, str] = {}
    for model in models:
        slug = _slug(model)
        if slug in slugs.values():
            slug = f"{slug}-{hashlib.sha256(model.encode()).hexdigest()[:8]}"
        slugs[model] = slug
    return slugs


def _figure(draw, path: Path) -> Path:
    from llmprune.errors import require

    matplotlib = require("matplotlib", "plot")
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    try:
        draw(ax)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


def _display(model: str) -> str:
    """A model's name for titles: a folder's name rather than its full path."""
    return Path(model).name if "/" in model and Path(model).expanduser().exists() else model


def _series(ok) -> dict[str, list]:
    """Unstructured levels of one method form a line; each N:M / group pattern is a series of its own (2:4 and 0.5
    have the same fraction of zeros but are different constraints)."""
    series: dict[str, list] = {}
    for r in ok:
        if r.recipe is None:
            continue
        pattern = str(r.recipe.get("sparsity") or "")
        name = _method(r) + (f" {pattern}" if ":" in pattern or "@" in pattern else "")
        series.setdefault(name, []).append(r)
    return series


def plot_ppl_vs_sparsity(results, model: str, key: str, path) -> Path:
    """Perplexity (``key`` = ``ppl:<set>``) vs achieved sparsity, one line per method, dense dashed."""
    ok = [r for r in results if r.model == model and r.status == "ok" and r.metrics.get(key) is not None]

    def draw(ax):
        for index, (name, rows) in enumerate(_series(ok).items()):
            points = sorted((r.metrics["sparsity"], r.metrics[key]) for r in rows)
            style = {"marker": "o"} if len(points) > 1 else {"marker": "sDv^<>pX*"[index % 9], "markersize": 9}
            ax.plot([x for x, _ in points], [y for _, y in points], label=name, **style)
        for r in ok:
            if r.recipe is None:
                ax.axhline(r.metrics[key], color="gray", linestyle="--", label=f"dense ({r.metrics[key]:.2f})")
        ax.set_yscale("log")
        ax.set_xlabel("achieved sparsity (fraction of Linear weights that are zero)")
        ax.set_ylabel(f"{_display(key[4:])} perplexity (log scale, lower is better)")
        ax.set_title(f"{_display(model)}: perplexity vs sparsity")

    return _figure(draw, Path(path))


def plot_acc_vs_bits(results, model: str, path) -> Path:
    """Zero-shot mean accuracy vs stored bits per parameter, one labelled point per variant."""
    ok = [r for r in results if r.model == model and r.status == "ok" and r.metrics.get("mean_acc") is not None]

    def draw(ax):
        for index, r in enumerate(ok):
            marker = "*" if r.recipe is None else "o"
            ax.scatter([r.metrics["bits"]], [r.metrics["mean_acc"]], marker=marker, s=80, color=f"C{index % 10}",
                       label=r.label, zorder=3)
        ax.set_xlabel("stored bits per parameter (compressed Linear layers)")
        ax.set_ylabel("zero-shot mean accuracy (higher is better)")
        ax.set_title(f"{_display(model)}: zero-shot accuracy vs bits per parameter")

    return _figure(draw, Path(path))


def write_report(results, out_dir, spec=None) -> list[Path]:
    """Write results.jsonl, results.md and the plots into ``out_dir``; returns the paths written."""
    from llmprune.model_cards.render import write_text_atomic as _write

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [_write(out / "results.jsonl", "".join(json.dumps(asdict(r), default=str) + "\n" for r in results)),
               _write(out / "results.md", markdown_table(results, spec))]
    for model, slug in _model_slugs(dict.fromkeys(r.model for r in results)).items():
        ok = [r for r in results if r.model == model and r.status == "ok"]
        for key in sorted({k for r in ok for k in r.metrics if k.startswith("ppl:")}):
            if any(r.recipe is not None for r in ok):
                name = f"{slug}-ppl-vs-sparsity-{_slug(key[4:])}.png"
                written.append(plot_ppl_vs_sparsity(results, model, key, out / "plots" / name))
        if any(r.metrics.get("mean_acc") is not None for r in ok):
            written.append(plot_acc_vs_bits(results, model, out / "plots" / f"{slug}-acc-vs-bits.png"))
    return written
