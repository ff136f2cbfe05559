"""Evaluation results kept with the checkpoint they measure: ``llmprune eval DIR`` adds its rows to DIR's
``llmprune.json`` (``evaluations``) and re-renders the model card, so ``llmprune push`` publishes the numbers
(card table and the Hub's ``model-index``) without anyone copying them by hand."""
from __future__ import annotations

import json
from pathlib import Path

from .render import FILENAME, GENERATED_MARK, render_card, write_texts_atomic


def record_results(directory, rows: list[dict], dtype: str = "float32") -> list[Path]:
    """Merge result rows into ``directory``'s manifest, a row replacing an earlier one with the same name, metric
    and note (the same measurement, re-run); re-render README.md unless the user edited it (no generated mark) or
    the folder records no compression recipe. A ``dtype`` other than float32 (the model as evaluated) joins each
    row's note. Both files are written aside before either replaces its original. Returns the files written."""
    from llmprune import manifest as mf

    rows = [{**row, "note": row["note"] + ("" if dtype == "float32" else f", {dtype}")} for row in rows]
    directory = Path(directory)
    path = directory / mf.FILENAME
    manifest = json.loads(path.read_text())
    key = ("name", "metric", "note")
    new = {tuple(r.get(k) for k in key) for r in rows}
    kept = [r for r in manifest.get("evaluations") or [] if tuple(r.get(k) for k in key) not in new]
    manifest["evaluations"] = kept + [dict(r) for r in rows]
    texts = {path: json.dumps(manifest, indent=1) + "\n"}
    card = directory / FILENAME
    ours = not card.exists() or GENERATED_MARK in card.read_text(encoding="utf-8")
    if ours and manifest.get("recipe"):  # cards describe compression runs (llmprune.save without one writes none)
        texts[card] = render_card(manifest)
    return write_texts_atomic(texts)
