"""Keep evaluation results with the checkpoint they measured (its manifest and model card), so that ``llmprune push``
of that folder publishes them. Shared by ``llmprune eval`` and ``llmprune batch``'s cached checkpoints."""
from __future__ import annotations

import warnings
from pathlib import Path


def record_rows(model_dir: Path, rows: list[dict], dtype: str, *, fix: str | None = None) -> list[Path]:
    """Merge result rows into ``model_dir``'s record (``model_cards.record_results``); returns the files written.
    The numbers were measured either way, so a folder that cannot be written only warns, with ``fix`` appended
    (how the caller can avoid it), and returns no files; so do no rows."""
    from llmprune.model_cards import record_results

    if not rows:
        return []
    try:
        return record_results(model_dir, rows, dtype)
    except OSError as exc:
        hint = f"; {fix}" if fix else ""
        warnings.warn(f"the results were not recorded in {model_dir} ({exc.strerror or exc}){hint}", stacklevel=2)
        return []
