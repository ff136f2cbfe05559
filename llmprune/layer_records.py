"""Model-level figures from the per-Linear records of a compression report (torch-free: the model card reads them
from a manifest without importing torch)."""
from __future__ import annotations


def weighted_mean(layers: dict[str, dict], key: str) -> float | None:
    """Mean of ``record[key]`` weighted by each Linear's parameter count (``numel``), over the records that have
    it; None when none do (e.g. ``bits_per_param`` without ``--quant``)."""
    rows = [(r[key], r["numel"]) for r in layers.values() if r.get(key) is not None and r.get("numel")]
    total = sum(n for _, n in rows)
    return sum(v * n for v, n in rows) / total if total else None
