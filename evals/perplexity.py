"""Perplexity with the SparseGPT / Wanda protocol, and the evaluation texts it is measured on.

Protocol (SparseGPT ``opt.py::opt_eval``, Wanda ``lib/eval.py::eval_ppl_wikitext``): tokenize the whole text once
(with the tokenizer's defaults, so at most one BOS at the very start), cut ``nsamples = tokens // seqlen``
non-overlapping windows and drop the tail, score each window with its labels shifted by one, and report ``exp`` of the
mean token negative log-likelihood.

Equivalence note: the reference multiplies each window's mean loss by ``seqlen`` and divides the sum by
``nsamples * seqlen``, although a window predicts only ``seqlen - 1`` tokens. Every window has the same length, so that
is the mean of the window means, which equals the exact mean over all ``nsamples * (seqlen - 1)`` predicted tokens that
we compute (summing token losses in float64). The numbers agree to rounding.

Evaluation texts (``load_eval_text``):
- ``wikitext2``: the test split's line rows joined with ``"\\n\\n"`` (checksum-verified, see ``llmprune.data.sources``).
- ``ptb``: the test split's sentences joined with ``" "`` (SparseGPT's ``get_ptb_new``; its older ``get_ptb`` scored the
  validation split).
- ``c4``: the first 1100 documents of C4-en validation shard 0 joined with ``" "``, scored on at most 256 windows
  (the reference's ``valenc[:, :256 * seqlen]``). Not in the shared data directory: online, or a local copy.
- any ``.txt`` / ``.jsonl`` / ``.parquet`` file: its text (records joined with ``"\\n\\n"``).
"""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field

import torch

from llmprune.data import sources
from llmprune.data.calibration import encode
from llmprune.errors import NumericalError, UserInputError
from llmprune.model.layers import context_length

C4_DOCUMENTS = 1100
C4_MAX_WINDOWS = 256


@dataclass(frozen=True)
class EvalText:
    """A text to score; ``max_windows`` caps the windows scored (C4's 256), ``description`` says where it came from."""

    name: str
    text: str
    description: dict = field(default_factory=dict)
    max_windows: int | None = None


@dataclass(frozen=True)
class PerplexityResult:
    ppl: float
    nll_mean: float
    windows: int
    tokens: int  # predicted tokens: windows * (seqlen - 1)
    seqlen: int
    dataset: str
    available_windows: int | None = None  # windows the text holds; more than ``windows`` when capped

    @property
    def nll(self) -> float:
        return self.nll_mean

    @property
    def capped(self) -> bool:
        return self.available_windows is not None and self.windows < self.available_windows

    def row(self, protocol_windows: int | None = None) -> dict:
        """The result as ``llmprune eval`` prints it and ``model_cards.rows_from_perplexity`` takes it;
        ``protocol_windows``: a set's own cap (C4's first 256 windows are its whole protocol), so that only a
        ``--ppl-max-windows`` cap below it reads as partial."""
        return {"dataset": self.dataset, "ppl": self.ppl, "nll": self.nll_mean, "seqlen": self.seqlen,
                "windows": self.windows, "tokens": self.tokens,
                "available_windows": smallest_cap(self.available_windows, protocol_windows)}

    def protocol(self) -> str:
        """One line that says what the number means; printed with every perplexity."""
        scored = f"the first {self.windows} of {self.available_windows}" if self.capped else f"{self.windows}"
        return (f"{self.dataset}: {scored} non-overlapping windows of {self.seqlen} tokens (tail dropped), "
                f"{self.tokens} predicted tokens, mean token NLL {self.nll_mean:.5f} -> ppl {self.ppl:.4f}")


def smallest_cap(*caps: int | None) -> int | None:
    """The tightest of the window caps that are set (None or 0: no cap); None when none is."""
    return min(filter(None, caps), default=None)


def load_eval_text(name_or_path: str) -> EvalText:
    """The text ``--ppl NAME`` scores: ``wikitext2``, ``ptb``, ``c4``, or a local file."""
    spec = str(name_or_path).strip()
    if sources.is_file_spec(spec):
        source = sources.load_file(spec)
        return EvalText(source.name, "\n\n".join(source.rows), source.description)
    name = spec.lower()
    if name == "wikitext2":
        source = sources.load_named("wikitext2", "test")
        return EvalText("wikitext2", "\n\n".join(source.rows), source.description)
    if name == "ptb":
        source = sources.load_named("ptb", "test")
        return EvalText("ptb", " ".join(source.rows), source.description)
    if name == "c4":
        source = sources.load_named("c4", "validation")
        return EvalText("c4", " ".join(source.rows[:C4_DOCUMENTS]), source.description, max_windows=C4_MAX_WINDOWS)
    close = difflib.get_close_matches(name, sources.NAMES, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise UserInputError(f"--ppl {spec}: unknown dataset; {hint}choose wikitext2, ptb, c4 or a .txt/.jsonl/.parquet "
                         f"file")


def scored_row(result: PerplexityResult, text: EvalText) -> dict:
    """``result.row`` for ``text``, with a local file's sha256: two files of one name are two benchmarks (their
    recorded rows would replace each other), the same file scored again is one."""
    row = result.row(text.max_windows)
    if text.description.get("origin") == "file" and text.description.get("sha256"):
        row["file_sha256"] = text.description["sha256"]
    return row


def default_seqlen(model, cap: int = 2048) -> int:
    """The model's context length, capped at ``cap``."""
    limit = context_length(model)
    return min(limit, int(cap)) if limit else int(cap)


def perplexity(model, tokenizer, text: str, *, seqlen: int, device: str = "cpu", batch_size: int = 1,
               progress: bool = True, dataset: str = "text", max_windows: int | None = None) -> PerplexityResult:
    """Perplexity of ``model`` (already on ``device``) on ``text`` with the papers' protocol (module docstring)."""
    if seqlen < 2:
        raise UserInputError(f"--seqlen {seqlen}: must be at least 2")
    if batch_size < 1:
        raise UserInputError(f"--batch-size {batch_size}: must be at least 1")
    ids = encode(tokenizer, text)
    available = windows = ids.numel() // seqlen
    if max_windows is not None:
        windows = min(windows, max_windows)
    if windows == 0:
        raise UserInputError(f"{dataset}: the text has {ids.numel()} tokens, fewer than --seqlen {seqlen}; "
                             f"lower --seqlen or use a longer text")
    batches = ids[: windows * seqlen].view(windows, seqlen).split(batch_size)
    total = _nll_sum(model, batches, torch.device(device), progress, dataset)
    tokens = windows * (seqlen - 1)
    nll_mean = total / tokens
    return PerplexityResult(ppl=math.exp(nll_mean), nll_mean=nll_mean, windows=windows, tokens=tokens,
                            seqlen=seqlen, dataset=dataset, available_windows=available)


@torch.no_grad()
def _nll_sum(model, batches, device: torch.device, progress: bool, dataset: str) -> float:
    """Σ over windows and positions t of -log p(x_{t+1} | x_≤t), from float32 logits, accumulated in float64."""
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    total = 0.0
    try:
        for batch in tqdm(batches, desc=f"ppl {dataset}", unit="batch", disable=not progress):
            batch = batch.to(device)
            logits = model(input_ids=batch, use_cache=False).logits[:, :-1, :].float()
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1),
                                                     reduction="none")
            total += float(loss.double().sum())
    finally:
        model.train(was_training)
    if not math.isfinite(total):
        raise NumericalError(f"{dataset}: the model produced non-finite losses (NaN/inf logits); check the model "
                             f"weights or evaluate in float32")
    return total
