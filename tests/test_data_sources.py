"""Named sources and local files: WikiText-2 rebuild checksums, resolution order, offline errors, file formats."""
from __future__ import annotations

import hashlib
import json
import re
import sys
import types

import pytest

from llmprune.data import sources
from llmprune.errors import DataNotFound, UserInputError
from tests.data_fixtures import hub_forbidden, offline_empty_data_dir, shared_data_dir  # noqa: F401

# Published in shared/data/SOURCES.md: rows, Σ(utf-8 bytes + 4) (= the HF card's num_bytes), corpus chars and sha256.
WIKITEXT2_FACTS = {
    "test": (4358, 1_305_088, 1_294_336, "696cca6b65a171b0a358a4be6732cdfdf2dd6164a32e20fd70e3c13fc4dfae83"),
    "validation": (3760, 1_159_288, 1_149_668, "b44fb967f92b525731216a507d1fbc44b97446b7ef0a2b4d1a893f81f1bbc29e"),
}
ORIGINAL_LOAD_HUB = sources._load_hub  # the fixtures replace it with a loader that fails the test


@pytest.mark.parametrize("split", ["test", "validation"])
def test_wikitext2_rebuild_matches_published_checksums(shared_data_dir, split):
    source = sources.load_named("wikitext2", split)
    rows, num_bytes, chars, sha = WIKITEXT2_FACTS[split]
    corpus = "\n\n".join(source.rows)
    assert len(source.rows) == rows
    assert sum(len(row.encode("utf-8")) + 4 for row in source.rows) == num_bytes
    assert len(corpus) == chars
    assert hashlib.sha256(corpus.encode("utf-8")).hexdigest() == sha
    # the standard line form: an empty first row, then an article heading " = Title = " (the sha256 pins the rest)
    assert source.rows[0] == "" and re.fullmatch(r" = [^=\n]+ = \n", source.rows[1])
    assert source.description["origin"] == "data_dir" and source.description["split"] == split


def _write_document_level(folder, pages):
    import pyarrow as pa

    folder.mkdir(parents=True)
    table = pa.table({"page": pages})
    with pa.OSFile(str(folder / "data-00000-of-00001.arrow"), "wb") as sink:
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)


def test_wikitext2_checksum_mismatch_is_one_line_error(offline_empty_data_dir):
    _write_document_level(offline_empty_data_dir / "wikitext2/document_level/test", [" = A = \n \n text \n"])
    with pytest.raises(DataNotFound, match="does not match the known text") as info:
        sources.load_named("wikitext2", "test")
    assert "\n" not in str(info.value)


def test_wikitext2_rows_rule_on_hand_built_pages(offline_empty_data_dir):
    """Split without a known checksum (train): the line rule alone, checked by hand."""
    pages = [" = A = \n \n Alpha line . \n", " = B = \n \n Beta . \n \n = = Sub = = \n"]
    _write_document_level(offline_empty_data_dir / "wikitext2/document_level/train", pages)
    rows = sources.load_named("wikitext2", "train").rows
    assert rows == ["", " = A = \n", "", " Alpha line . \n", "", " = B = \n", "", " Beta . \n", "", " = = Sub = = \n"]


@pytest.mark.parametrize("name,split,layout", [("c4", "train", "c4/c4_sample.jsonl"),
                                                ("wikitext2", "test", "wikitext2/document_level/test/"),
                                                ("ptb", "test", "ptb/ptb.test.txt")])
def test_missing_dataset_offline_is_one_line_data_not_found(offline_empty_data_dir, name, split, layout):
    with pytest.raises(DataNotFound) as info:
        sources.load_named(name, split)
    message = str(info.value)
    assert "\n" not in message and "LLMPRUNE_DATA_DIR" in message and layout in message


def test_data_dir_unset_offline_names_the_variable(monkeypatch):
    monkeypatch.delenv("LLMPRUNE_DATA_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(sources, "_load_hub", hub_forbidden)
    with pytest.raises(DataNotFound, match="LLMPRUNE_DATA_DIR is not set"):
        sources.load_named("c4", "train")


def test_unreachable_hub_fails_fast_and_says_the_data_dir_is_missing(monkeypatch, tmp_path):
    """Not offline by flag but no network: one line in seconds (datasets retried for ~25 s), naming a data dir
    that does not exist."""
    monkeypatch.setenv("LLMPRUNE_DATA_DIR", str(tmp_path / "dta"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    monkeypatch.setattr(sources, "hub_reachable", lambda: False)
    monkeypatch.setattr(sources, "_load_hub", hub_forbidden)
    with pytest.raises(DataNotFound, match=r"dta, which does not exist\) and the Hugging Face Hub is unreachable"):
        sources.load_named("c4", "train")


def test_data_dir_wins_over_hub_when_online(shared_data_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # online, but the local copy must be used (the Hub loader would fail)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    source = sources.load_named("c4", "train")
    assert len(source.rows) == 1000 and source.description["origin"] == "data_dir"
    assert source.description["sha256"] == "cdd5b754119131d2934e3e799a059a9d64f53a6aac9e7e2ef79b43120bb01a32"


def test_online_without_local_copy_uses_the_hub(offline_empty_data_dir, monkeypatch):
    calls = []
    fake = types.SimpleNamespace(load_dataset=lambda *a, **k: calls.append((a, k)) or {"text": ["doc one", None]})
    monkeypatch.setitem(sys.modules, "datasets", fake)
    monkeypatch.setattr(sources, "_load_hub", ORIGINAL_LOAD_HUB)
    monkeypatch.setattr(sources, "hub_reachable", lambda: True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    source = sources.load_named("c4", "validation")
    assert source.rows == ["doc one", ""] and source.description["origin"] == "hub"
    (args, kwargs), = calls
    assert args[0] == "allenai/c4" and kwargs["data_files"] == {"validation": "en/c4-validation.00000-of-00008.json.gz"}


def test_hub_failure_is_one_line_data_not_found(offline_empty_data_dir, monkeypatch):
    def refuse(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'allenai/c4' on the Hub (LocalEntryNotFoundError)\nmore detail")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=refuse))
    monkeypatch.setattr(sources, "_load_hub", ORIGINAL_LOAD_HUB)
    monkeypatch.setattr(sources, "hub_reachable", lambda: True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    with pytest.raises(DataNotFound, match="could not be loaded from the Hub") as info:
        sources.load_named("c4", "train")
    assert "\n" not in str(info.value) and "c4/c4_sample.jsonl" in str(info.value)


def test_local_txt_jsonl_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.txt").write_text("line one\nline two\n", encoding="utf-8")
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate("xyz")) + "\n")
    pq.write_table(pa.table({"text": ["p", "q"], "other": [1, 2]}), tmp_path / "c.parquet")
    assert sources.load_file(tmp_path / "a.txt").rows == ["line one\nline two\n"]
    assert sources.load_file(tmp_path / "b.jsonl").rows == ["x", "y", "z"]
    source = sources.load_file(tmp_path / "c.parquet")
    assert source.rows == ["p", "q"]
    assert source.description["sha256"] == hashlib.sha256((tmp_path / "c.parquet").read_bytes()).hexdigest()


def test_local_file_errors_are_one_line(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"body": "no text"}\n')
    (tmp_path / "bad.parquet").write_text("not parquet")
    pq.write_table(pa.table({"text": [1, 2, 3]}), tmp_path / "numbers.parquet")
    (tmp_path / "latin1.txt").write_bytes("café crème".encode("latin-1"))
    (tmp_path / "latin1.jsonl").write_bytes('{"text": "café"}\n'.encode("latin-1"))
    (tmp_path / "folder.txt").mkdir()
    cases = [(tmp_path / "bad.jsonl", UserInputError, "bad.jsonl:2"), (tmp_path / "missing.txt", DataNotFound, "not found"),
             (tmp_path / "bad.parquet", UserInputError, "not a readable parquet file"),
             (tmp_path / "numbers.parquet", UserInputError, "column 'text' holds int64, not strings"),
             (tmp_path / "latin1.txt", UserInputError, "is not UTF-8 text .* at byte 3"),
             (tmp_path / "latin1.jsonl", UserInputError, "is not UTF-8 text"),
             (tmp_path / "folder.txt", UserInputError, "is a folder")]
    for path, error, fragment in cases:
        with pytest.raises(error, match=fragment) as info:
            sources.load_file(path)
        assert "\n" not in str(info.value)


def test_ptb_local_layout(offline_empty_data_dir):
    folder = offline_empty_data_dir / "ptb"
    folder.mkdir()
    (folder / "ptb.test.txt").write_text(" no it was n't black monday \n but while the new york \n")
    source = sources.load_named("ptb", "test")
    assert source.rows == ["no it was n't black monday", "but while the new york"]


def test_an_unknown_split_lists_the_known_ones():
    with pytest.raises(UserInputError, match="dataset 'c4' has no split 'nosplit'; choose train, validation"):
        sources.load_named("c4", "nosplit")
