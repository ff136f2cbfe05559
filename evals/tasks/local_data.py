"""Loaders for lm-eval's ``custom_dataset`` hook: the standard zero-shot sets read from ``LLMPRUNE_DATA_DIR``.

lm-eval calls ``custom_dataset(**metadata, **dataset_kwargs)`` instead of ``datasets.load_dataset`` when a task YAML
sets ``custom_dataset: !function local_data.<loader>``. Each loader returns a ``DatasetDict`` whose split and column
names are those of the Hub dataset that lm-eval's own YAML reads, so the prompts (``doc_to_text``/``doc_to_choice``/
``doc_to_target``) are copied unchanged from lm-eval's YAMLs:

- ARC (allenai/ai2_arc): ``question`` (the stem), ``choices: {text, label}``, ``answerKey`` — split ``test``.
- PIQA (baber/piqa): ``goal``, ``sol1``, ``sol2``, ``label`` (int, from the separate ``valid-labels.lst``) —
  split ``validation``.
- BoolQ (aps/super_glue boolq): ``question``, ``passage``, ``idx``, ``label`` (1 = yes); the local file stores
  ``"true"``/``"false"`` strings — split ``validation``.
- HellaSwag (Rowan/hellaswag after lm-eval's ``process_docs``): ``query``, ``choices``, ``label`` — split
  ``validation``.

Deviation (HellaSwag): the local file is llama.cpp's derived text form (six lines per task, lm-eval's preprocessing
already applied). Its context is ``activity_label + ": " + ctx``, while lm-eval builds ``ctx_a + " " +
ctx_b.capitalize()``; ``ctx_b`` is not kept, so its first letter may differ in case (and str.capitalize() would also
lower-case the rest of ``ctx_b``). Scores can differ slightly from published lm-eval HellaSwag numbers.

The path comes only from ``llmprune.settings.data_dir()``; a missing file raises ``DataNotFound`` naming the setting.
"""
from __future__ import annotations

import json
from pathlib import Path

from llmprune.errors import DataNotFound
from llmprune.settings import data_dir

FILES = {
    "arc_easy": ("arc_easy/ARC-Easy-Test.jsonl",),
    "arc_challenge": ("arc_challenge/ARC-Challenge-Test.jsonl",),
    "piqa": ("piqa/valid.jsonl", "piqa/valid-labels.lst"),
    "boolq": ("boolq/val.jsonl",),
    "hellaswag": ("hellaswag/hellaswag_val_full.txt",),
}


def missing_files(name: str) -> list[str]:
    """The files of task ``name`` that the data dir lacks (all of them when the setting is unset)."""
    root = data_dir()
    if root is None:
        return list(FILES[name])
    return [rel for rel in FILES[name] if not (root / rel).is_file()]


def _paths(name: str) -> list[Path]:
    missing = missing_files(name)
    if missing:
        where = data_dir() or "<unset>"
        raise DataNotFound(f"task {name}: {missing[0]} not found in LLMPRUNE_DATA_DIR={where}; set LLMPRUNE_DATA_DIR "
                           f"to the folder holding {name}/ (or run online to use lm-eval's Hub task)")
    return [data_dir() / rel for rel in FILES[name]]


def _jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _dataset(split: str, rows: list[dict]):
    import datasets

    return datasets.DatasetDict({split: datasets.Dataset.from_list(rows)})


def _arc(name: str):
    rows = []
    for doc in _jsonl(_paths(name)[0]):
        choices = doc["question"]["choices"]
        rows.append({"id": doc["id"], "question": doc["question"]["stem"],
                     "choices": {"text": [c["text"] for c in choices], "label": [c["label"] for c in choices]},
                     "answerKey": doc["answerKey"]})
    return _dataset("test", rows)


def load_arc_easy(**_):
    return _arc("arc_easy")


def load_arc_challenge(**_):
    return _arc("arc_challenge")


def load_piqa(**_):
    docs_path, labels_path = _paths("piqa")
    docs = _jsonl(docs_path)
    labels = [int(line) for line in labels_path.read_text().split()]
    if len(labels) != len(docs):
        raise DataNotFound(f"task piqa: {labels_path.name} has {len(labels)} labels for {len(docs)} rows of "
                           f"{docs_path.name}; restore both files from the same PIQA release")
    return _dataset("validation", [{"goal": d["goal"], "sol1": d["sol1"], "sol2": d["sol2"], "label": y}
                                   for d, y in zip(docs, labels)])


def _bool_label(value) -> int:
    text = str(value).strip().lower()
    if text not in {"true", "false", "1", "0"}:
        raise DataNotFound(f"task boolq: label {value!r} is not true/false; restore boolq/val.jsonl")
    return int(text in {"true", "1"})


def load_boolq(**_):
    rows = [{"question": d["question"], "passage": d["passage"], "idx": d.get("idx", i), "label": _bool_label(d["label"])}
            for i, d in enumerate(_jsonl(_paths("boolq")[0]))]
    return _dataset("validation", rows)


def load_hellaswag(**_):
    lines = _paths("hellaswag")[0].read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) % 6:
        raise DataNotFound("task hellaswag: hellaswag_val_full.txt is not 6 lines per task; restore the file")
    rows = [{"query": lines[i], "label": int(lines[i + 1]), "choices": lines[i + 2:i + 6]}
            for i in range(0, len(lines), 6)]
    return _dataset("validation", rows)
