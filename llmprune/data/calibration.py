"""Calibration windows: ``nsamples`` random windows of ``seqlen`` tokens, seeded, as the SparseGPT and Wanda code draws.

The reference ``datautils.py`` (SparseGPT, Frantar & Alistarh 2023; Wanda, Sun et al. 2023) seeds Python's ``random``
and then, per window:

- WikiText-2 / PTB: tokenizes the training split joined with ``" "`` once and draws ``i = randint(0, len - seqlen - 1)``;
  the window is ``ids[i : i + seqlen]``.
- C4: draws a document ``randint(0, len(docs) - 1)``, re-drawing until its tokenization is longer than ``seqlen``, then
  ``i = randint(0, len(doc) - seqlen - 1)`` inside it.

We make the same calls in the same order on a ``random.Random(seed)`` instance, which yields the same numbers as
``random.seed(seed)`` without touching global state. Source specs: ``c4`` (train), ``wikitext2`` (validation, see below),
``ptb`` (train), ``NAME:SPLIT``, a ``.txt``/``.jsonl``/``.parquet`` file, or ``self[:temperature=T,start=bos|random]``.

Deviation: the papers calibrate on WikiText-2 *train*, which is not available offline here; ``wikitext2`` therefore means
its validation split (``wikitext2:train`` when you have it). The test split is refused: it is the evaluation text.
Local files are treated as one corpus (WikiText-2's rule): records joined with ``"\\n\\n"``, tokenized once.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..errors import UserInputError
from ..recipe import Calibration
from . import sources

CALIBRATION_SPLIT = {"wikitext2": "validation", "ptb": "train", "c4": "train"}
CORPUS_JOINER = {"wikitext2": " ", "ptb": " "}  # reference: " ".join(traindata[...]); local files: "\n\n"


@dataclass(frozen=True)
class CalibrationSet:
    """ids: [nsamples, seqlen] int64 token windows; sha256 of them (see ``windows_sha256``); how they were drawn."""

    ids: Tensor
    sha256: str
    description: dict = field(default_factory=dict)


def windows_sha256(ids: Tensor) -> str:
    """sha256 over ``b"int64[n,seqlen]"`` followed by the ids' little-endian int64 bytes, row-major."""
    header = f"int64[{','.join(str(d) for d in ids.shape)}]".encode()
    payload = ids.detach().to(torch.int64).cpu().contiguous().numpy().astype("<i8").tobytes()
    return hashlib.sha256(header + payload).hexdigest()


def encode(tokenizer, text: str) -> Tensor:
    """Token ids [tokens] of ``text``, with the tokenizer's default special tokens (as the reference code does)."""
    ids = tokenizer(text, return_tensors="pt", verbose=False).input_ids
    return ids[0].to(torch.int64)


def is_self_generated(spec) -> bool:
    """``self`` or ``self:OPTIONS``: the model writes its own calibration text (no data to find beforehand)."""
    spec = str(spec).strip()
    return spec == "self" or spec.startswith("self:")


def calibration_windows(tokenizer, calibration: Calibration, *, model=None, progress: bool = True) -> CalibrationSet:
    """Draw ``calibration.nsamples`` windows of ``calibration.seqlen`` tokens from ``calibration.source``
    (``progress``: a bar while the model generates them, for ``self``)."""
    spec = str(calibration.source).strip()
    if is_self_generated(spec):
        if model is None:
            raise UserInputError("--calib self needs the model to generate its own calibration text")
        from .selfgen import self_generated_windows

        ids, description = self_generated_windows(model, tokenizer, calibration, progress=progress)
    else:
        ids, description = _windows_from_text(tokenizer, spec, calibration)
    description.update(nsamples=calibration.nsamples, seqlen=calibration.seqlen, seed=calibration.seed)
    return CalibrationSet(ids=ids, sha256=windows_sha256(ids), description=description)


def check_calibration_source(spec: str) -> None:
    """The source a spec names can be read: checked in a second before the model loads (minutes for a 7B
    checkpoint). A named set's rows are read (they are small); a file is only looked at (it may be large; its text
    is checked when it is read)."""
    spec = str(spec).strip()
    if is_self_generated(spec):
        return
    if sources.is_file_spec(spec):
        sources.check_file(spec)
    else:
        calibration_source(spec)


def calibration_source(spec: str) -> sources.TextSource:
    """The rows a calibration spec names; the test split of a named set is refused."""
    if sources.is_file_spec(spec):
        return sources.load_file(spec)
    name, _, split = spec.partition(":")
    name = name.strip().lower()
    if name not in CALIBRATION_SPLIT:
        raise UserInputError(f"--calib {spec}: unknown source; choose c4, wikitext2, ptb, self, "
                             f"or a .txt/.jsonl/.parquet file")
    split = split.strip().lower() or CALIBRATION_SPLIT[name]
    if split == "test":
        raise UserInputError(f"--calib {spec}: the test split is the evaluation text; calibrate on "
                             f"{name}:{CALIBRATION_SPLIT[name]} (or c4) instead")
    return sources.load_named(name, split)


def _windows_from_text(tokenizer, spec: str, calibration: Calibration) -> tuple[Tensor, dict]:
    source = calibration_source(spec)
    rng = random.Random(calibration.seed)
    description = dict(source.description)
    if source.name == "c4" and source.split != "file":
        ids, drawn = _document_windows(tokenizer, source.rows, calibration.nsamples, calibration.seqlen, rng, spec)
        description.update(sampling="c4 rule: random document longer than seqlen, random window in it",
                           documents=len(source.rows), documents_tokenized=drawn)
        return ids, description
    joiner = CORPUS_JOINER.get(source.name, "\n\n")
    text = joiner.join(source.rows)
    corpus = encode(tokenizer, text)
    ids = _corpus_windows(corpus, calibration.nsamples, calibration.seqlen, rng, spec)
    description.update(sampling=f"corpus rule: rows joined with {joiner!r}, tokenized once, random windows",
                       text_sha256=sources.text_sha256(text), corpus_tokens=int(corpus.numel()))
    return ids, description


def _corpus_windows(corpus: Tensor, nsamples: int, seqlen: int, rng: random.Random, spec: str) -> Tensor:
    """Reference: ``i = randint(0, len - seqlen - 1); ids[i:i+seqlen]`` once per window."""
    total = int(corpus.numel())
    if total <= seqlen:
        raise UserInputError(f"--calib {spec}: the text has {total} tokens, not more than --seqlen {seqlen}; "
                             f"lower --seqlen or use a larger source")
    starts = [rng.randint(0, total - seqlen - 1) for _ in range(nsamples)]
    return torch.stack([corpus[i:i + seqlen] for i in starts])


def _document_windows(tokenizer, docs: list[str], nsamples: int, seqlen: int, rng: random.Random,
                      spec: str) -> tuple[Tensor, int]:
    """Reference C4 rule. Documents are tokenized when first drawn; once every document has proven too short, the
    reference would loop forever, so we stop with an error instead."""
    if not docs:
        raise UserInputError(f"--calib {spec}: the source holds no documents")
    cache: dict[int, Tensor] = {}
    too_short: set[int] = set()
    windows = []
    for _ in range(nsamples):
        while True:
            index = rng.randint(0, len(docs) - 1)
            if index not in cache:
                cache[index] = encode(tokenizer, docs[index])
            if cache[index].numel() > seqlen:
                break
            too_short.add(index)
            if len(too_short) == len(docs):
                raise UserInputError(f"--calib {spec}: no document is longer than --seqlen {seqlen} tokens; "
                                     f"lower --seqlen or use a source with longer documents")
        doc = cache[index]
        start = rng.randint(0, doc.numel() - seqlen - 1)
        windows.append(doc[start:start + seqlen])
    return torch.stack(windows), len(cache)
