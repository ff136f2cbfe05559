"""The sweep's PNG: perplexity vs sparsity, one line per variant, log y, dense baseline, knees marked.

matplotlib is imported inside the function (``import llmprune`` never imports it) with the non-interactive Agg
backend, so plotting works on headless machines.
"""
from __future__ import annotations

from pathlib import Path


def plot_sweep(result, path) -> Path:
    """Draw ``result`` (an ``evals.sweep.SweepResult``) to ``path``. N:M levels are separate markers at their
    fraction of zeros (2:4 at 0.5); each variant's knee (first level over the margin) gets a ring, its essential
    sparsity a vertical dotted line."""
    from llmprune.errors import require

    matplotlib = require("matplotlib", "plot")
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    try:
        _draw(ax, result)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return Path(path)


def _draw(ax, result) -> None:
    knees = result.knees()
    markers = "osD^v<>pX*"
    for index, variant in enumerate(result.variants()):
        points = result.points_of(variant)
        curve = sorted((p for p in points if p.pattern == "unstructured"), key=lambda p: p.fraction)
        color = f"C{index % 10}"
        if curve:
            ax.plot([p.fraction for p in curve], [p.ppl for p in curve], marker="o", color=color, label=variant)
        for k, p in enumerate(p for p in points if p.pattern == "nm"):
            ax.scatter([p.fraction], [p.ppl], marker=markers[(k + 1) % len(markers)], s=60, color=color,
                       edgecolors="black", zorder=3, label=f"{variant} {p.sparsity}")
        knee = knees[variant]
        if knee["knee_sparsity"] is not None:
            ax.scatter([knee["knee_sparsity"]], [knee["knee_ppl"]], s=220, facecolors="none", edgecolors=color,
                       linewidths=2, zorder=4, label=f"{variant} knee ({knee['knee_sparsity']:g})")
        if knee["essential_sparsity"] is not None:
            ax.axvline(knee["essential_sparsity"], color=color, linestyle=":", linewidth=1)
    ax.axhline(result.dense_ppl, color="gray", linestyle="--", label=f"dense ({result.dense_ppl:.2f})")
    ax.axhline(result.dense_ppl * (1 + result.margin), color="gray", linestyle=":", linewidth=1,
               label=f"dense +{result.margin:.0%}")
    ax.set_yscale("log")
    ax.set_xlabel("sparsity (fraction of weights pruned)")
    ax.set_ylabel(f"{result.dataset} perplexity (log scale)")
    ax.set_title(f"{result.model}: perplexity vs sparsity")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
