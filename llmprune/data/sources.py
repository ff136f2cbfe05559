"""Named text sources (``wikitext2``, ``ptb``, ``c4``) and local ``.txt`` / ``.jsonl`` / ``.parquet`` files.

Resolution order for a name: an explicit existing path, then the data directory (``LLMPRUNE_DATA_DIR/<name>/...``), then
Hugging Face ``datasets`` when online. Offline with no local copy is a one-line ``DataNotFound`` naming the variable and
the layout expected. Every ``TextSource`` says where its rows came from (file + sha256, or the Hub id), so a manifest
can name the exact data.

Layouts in the data directory (``LAYOUTS``)::

    wikitext2/document_level/{train,validation,test}/  EleutherAI's document-level ``save_to_disk`` (Arrow stream)
    c4/c4-train.00000-of-01024.json.gz or c4/c4_sample.jsonl (train: C4-en train shard 0, whole or its first documents)
    c4/c4-validation.00000-of-00008.json.gz or c4/c4_validation.jsonl (validation)
    ptb/ptb.train.txt  ptb/ptb.valid.txt  ptb/ptb.test.txt  (Mikolov's simple-examples files, one sentence per line)

WikiText-2 rows are rebuilt as the line-per-row ``Salesforce/wikitext`` split (the papers' text): the raw file is
``" \\n" + "\\n".join(pages)``; a whitespace-only line becomes ``""``, any other line is kept with its ``"\\n"``. The
``"\\n\\n".join(rows)`` corpus is checked against the sha256 that ``shared/data/SOURCES.md`` gives; a mismatch is an error.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataNotFound, UserInputError
from ..settings import data_dir, describe_data_dir, hub_offline, hub_reachable

NAMES = ("wikitext2", "ptb", "c4")
FILE_SUFFIXES = (".txt", ".jsonl", ".parquet")

# sha256 of "\n\n".join(rows) for the rebuilt WikiText-2 raw splits (shared/data/SOURCES.md).
WIKITEXT2_SHA256 = {
    "test": "696cca6b65a171b0a358a4be6732cdfdf2dd6164a32e20fd70e3c13fc4dfae83",
    "validation": "b44fb967f92b525731216a507d1fbc44b97446b7ef0a2b4d1a893f81f1bbc29e",
}

# (name, split) -> candidate paths under the data directory, the first existing one wins.
LAYOUTS = {
    ("wikitext2", "train"): ("wikitext2/document_level/train/",),
    ("wikitext2", "validation"): ("wikitext2/document_level/validation/",),
    ("wikitext2", "test"): ("wikitext2/document_level/test/",),
    ("c4", "train"): ("c4/c4-train.00000-of-01024.json.gz", "c4/c4_sample.jsonl"),
    ("c4", "validation"): ("c4/c4-validation.00000-of-00008.json.gz", "c4/c4_validation.jsonl"),
    ("ptb", "train"): ("ptb/ptb.train.txt",),
    ("ptb", "validation"): ("ptb/ptb.valid.txt",),
    ("ptb", "test"): ("ptb/ptb.test.txt",),
}

# Hub fallbacks, as the SparseGPT/Wanda datautils load them: (dataset, config, data_files, text column).
HUB = {
    "wikitext2": ("Salesforce/wikitext", "wikitext-2-raw-v1", None, "text"),
    "ptb": ("ptb_text_only", "penn_treebank", None, "sentence"),
    "c4": ("allenai/c4", None, {"train": "en/c4-train.00000-of-01024.json.gz",
                                "validation": "en/c4-validation.00000-of-00008.json.gz"}, "text"),
}


@dataclass(frozen=True)
class TextSource:
    """Rows of one split: WikiText-2 lines, PTB sentences, C4 documents, or a local file's records.

    ``description`` holds ``source``, ``split``, ``origin`` ('file' | 'data_dir' | 'hub'), and ``path`` + ``sha256``
    of the file read (of its files' bytes concatenated in name order for a folder; the Hub id and None for the Hub).
    """

    name: str
    split: str
    rows: list[str]
    description: dict = field(default_factory=dict)


def is_file_spec(spec: str) -> bool:
    """True for an existing file or a name ending in a supported suffix (a missing file is then an error). A folder
    that happens to be called ``c4`` in the working directory does not shadow the named source."""
    return Path(spec).expanduser().is_file() or str(spec).lower().endswith(FILE_SUFFIXES)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
        if file.is_file():
            digest.update(file.read_bytes())
    return digest.hexdigest()


def check_file(spec: str | Path) -> Path:
    """The file exists and has a type we read; its text is checked when it is read (``load_file``)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        raise UserInputError(f"data file '{spec}' is a folder; give a .txt, .jsonl or .parquet file")
    if not path.is_file():
        raise DataNotFound(f"data file '{spec}' not found (give an existing .txt, .jsonl or .parquet file)")
    if path.suffix.lower() not in FILE_SUFFIXES:
        raise UserInputError(f"data file '{spec}': unsupported type '{path.suffix.lower()}' (use .txt, .jsonl or "
                             f".parquet)")
    return path


def load_file(spec: str | Path) -> TextSource:
    """A local file: ``.txt`` (one row: the whole text), ``.jsonl`` (field ``text``), ``.parquet`` (column ``text``)."""
    path = check_file(spec)
    suffix = path.suffix.lower()
    try:
        if suffix == ".txt":
            rows = [path.read_text(encoding="utf-8")]
        elif suffix == ".jsonl":
            rows = _jsonl_texts(path, "text")
        else:
            rows = _parquet_texts(path)
    except UnicodeDecodeError as exc:
        raise UserInputError(f"data file '{spec}' is not UTF-8 text ({exc.reason} at byte {exc.start}); give a "
                             f"UTF-8 text file") from None
    if not any(row.strip() for row in rows):
        raise UserInputError(f"data file '{spec}' holds no text; give a file with text in it"
                             f"{' (a text field per JSON line)' if suffix == '.jsonl' else ''}")
    return TextSource(path.name, "file", rows, {"source": str(path), "split": "file", "origin": "file",
                                                "path": str(path.resolve()), "sha256": file_sha256(path)})


def _jsonl_texts(path: Path, key: str) -> list[str]:
    import gzip

    rows = []
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise UserInputError(f"{path}:{number}: not valid JSON (one object per line, with a '{key}' field)") from None
            if not isinstance(record, dict) or not isinstance(record.get(key), str):
                raise UserInputError(f"{path}:{number}: no string field '{key}' (each line needs {{\"{key}\": ...}})")
            rows.append(record[key])
    return rows


def _parquet_texts(path: Path) -> list[str]:
    import pyarrow.parquet as parquet  # a dependency of datasets

    import pyarrow

    try:
        table = parquet.read_table(path)
    except (pyarrow.ArrowException, OSError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserInputError(f"{path}: not a readable parquet file ({first}); give a parquet file with a "
                             f"'text' column") from None
    if "text" not in table.column_names:
        raise UserInputError(f"{path}: no column 'text' (columns: {', '.join(table.column_names)})")
    column = table.column("text")
    if not (pyarrow.types.is_string(column.type) or pyarrow.types.is_large_string(column.type)
            or pyarrow.types.is_null(column.type)):
        raise UserInputError(f"{path}: column 'text' holds {column.type}, not strings; give the text itself")
    return [value or "" for value in column.to_pylist()]


def load_named(name: str, split: str) -> TextSource:
    """Rows of ``name``/``split``: the data directory first, then the Hub when online, else ``DataNotFound``."""
    if name not in NAMES:
        raise UserInputError(f"unknown dataset '{name}'; choose {', '.join(NAMES)} or a .txt/.jsonl/.parquet file")
    if (name, split) not in LAYOUTS:
        splits = sorted(known for dataset, known in LAYOUTS if dataset == name)
        raise UserInputError(f"dataset '{name}' has no split '{split}'; choose {', '.join(splits)}")
    layout = " or ".join(f"$LLMPRUNE_DATA_DIR/{path}" for path in LAYOUTS[(name, split)])
    root = data_dir()
    local = _local_layout(root, name, split) if root is not None else None
    if local is not None:
        return local
    if hub_offline(datasets=True):
        raise DataNotFound(f"dataset '{name}' split '{split}' not found offline ({describe_data_dir()}); put it at "
                           f"{layout} or go online (unset HF_HUB_OFFLINE / HF_DATASETS_OFFLINE)")
    if not hub_reachable():
        raise DataNotFound(f"dataset '{name}' split '{split}' not found locally ({describe_data_dir()}) and the "
                           f"Hugging Face Hub is unreachable; put it at {layout}")
    return _load_hub(name, split)


def _local_layout(root: Path, name: str, split: str) -> TextSource | None:
    found = [root / candidate for candidate in LAYOUTS[(name, split)] if (root / candidate).exists()]
    if not found:
        return None
    path = found[0]
    if name == "wikitext2":
        rows = wikitext2_rows(path, split)
    elif name == "c4":
        rows = _jsonl_texts(path, "text")
    else:  # as HF's ptb_text_only builder: one stripped sentence per line
        rows = [line.strip() for line in _lines(path.read_text(encoding="utf-8"))]
    return TextSource(name, split, rows, {"source": name, "split": split, "origin": "data_dir", "path": str(path),
                                          "sha256": file_sha256(path)})


def wikitext2_rows(folder: Path, split: str) -> list[str]:
    """Rebuild the line-per-row WikiText-2 raw split from EleutherAI's document-level ``save_to_disk`` folder."""
    import pyarrow.ipc as ipc  # a dependency of datasets

    arrows = sorted(Path(folder).glob("data-*.arrow"))
    if not arrows:
        raise DataNotFound(f"no data-*.arrow file in {folder} (expected a datasets save_to_disk folder)")
    pages: list[str] = []
    for arrow in arrows:
        with ipc.open_stream(str(arrow)) as reader:
            pages += reader.read_all().column("page").to_pylist()
    raw = " \n" + "\n".join(pages)
    rows = ["" if not line.strip() else line + "\n" for line in _lines(raw)]
    verify_wikitext2(rows, split, str(folder))
    return rows


def _lines(text: str) -> list[str]:
    """Lines split on "\n" only (not on the other separators ``str.splitlines`` knows), without a final empty one."""
    pieces = text.split("\n")
    return pieces[:-1] if pieces and pieces[-1] == "" else pieces


def verify_wikitext2(rows: list[str], split: str, where: str) -> None:
    """The ``"\n\n".join(rows)`` corpus must be the known WikiText-2 raw text of ``split`` (test, validation)."""
    expected = WIKITEXT2_SHA256.get(split)
    actual = text_sha256("\n\n".join(rows))
    if expected is not None and actual != expected:
        raise DataNotFound(f"WikiText-2 {split} in {where} does not match the known text (sha256 {actual[:12]}… != "
                           f"{expected[:12]}…); replace it with the files shared/data/SOURCES.md describes")


def _load_hub(name: str, split: str) -> TextSource:
    """The Hub copy the reference code reads (online only); any failure becomes a one-line ``DataNotFound``."""
    import datasets  # a core dependency, imported only here (never by `import llmprune`)

    dataset_id, config, files, column = HUB[name]
    kwargs = {"data_files": {split: files[split]}} if files else {}
    try:
        table = datasets.load_dataset(dataset_id, config, split=split, **kwargs)
        rows = [row or "" for row in table[column]]
    except Exception as exc:  # network, missing script, auth: all mean "not obtainable here"
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise DataNotFound(f"dataset '{name}' split '{split}' could not be loaded from the Hub ({first}); put it at "
                           f"$LLMPRUNE_DATA_DIR/{LAYOUTS[(name, split)][-1]}") from None
    if name == "wikitext2":
        verify_wikitext2(rows, split, dataset_id)
    hub_id = f"{dataset_id}" + (f"/{config}" if config else "") + (f" {files[split]}" if files else "")
    return TextSource(name, split, rows, {"source": name, "split": split, "origin": "hub", "path": hub_id,
                                          "sha256": None})


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
