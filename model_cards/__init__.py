"""Model cards: a Jinja template filled from an output folder's manifest and evaluation results (see render.py);
``record.py`` keeps an evaluation's results with the checkpoint."""
from .record import record_results
from .render import render_card, rows_from_perplexity, rows_from_zeroshot, write_card

__all__ = ["render_card", "write_card", "record_results", "rows_from_zeroshot", "rows_from_perplexity"]
