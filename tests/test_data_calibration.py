"""Calibration windows: the reference datautils sampling (re-implemented here with the global ``random`` module, as
the SparseGPT/Wanda code does), determinism, the C4 document-length rule, hashing and bad input."""
from __future__ import annotations

import hashlib
import json
import random

import pytest
import torch

from llmprune.data.calibration import calibration_windows
from llmprune.errors import DataNotFound, UserInputError
from llmprune.recipe import Calibration
from tests.data_fixtures import offline_empty_data_dir, shared_data_dir, tiny_lm  # noqa: F401


@pytest.fixture(scope="module")
def tokenizer():
    from tests.tiny_models import tiny_tokenizer

    return tiny_tokenizer()


def reference_corpus_windows(tokenizer, text, nsamples, seqlen, seed):
    """SparseGPT datautils.get_wikitext2 / get_ptb, verbatim in spirit."""
    trainenc = tokenizer(text, return_tensors="pt").input_ids
    random.seed(seed)
    loader = []
    for _ in range(nsamples):
        i = random.randint(0, trainenc.shape[1] - seqlen - 1)
        loader.append(trainenc[:, i:i + seqlen])
    return torch.cat(loader)


def reference_c4_windows(tokenizer, docs, nsamples, seqlen, seed):
    """SparseGPT datautils.get_c4 (train part)."""
    random.seed(seed)
    loader = []
    for _ in range(nsamples):
        while True:
            i = random.randint(0, len(docs) - 1)
            trainenc = tokenizer(docs[i], return_tensors="pt").input_ids
            if trainenc.shape[1] > seqlen:
                break
        i = random.randint(0, trainenc.shape[1] - seqlen - 1)
        loader.append(trainenc[:, i:i + seqlen])
    return torch.cat(loader)


def _write_c4(data_dir, docs):
    (data_dir / "c4").mkdir()
    (data_dir / "c4" / "c4_sample.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))


def test_c4_windows_follow_the_reference_draws(offline_empty_data_dir, tokenizer):
    words = "pruning keeps the weights that matter most for the output".split()
    rng = random.Random(7)
    docs = [" ".join(rng.choice(words) for _ in range(rng.choice([3, 5, 40, 90]))) for _ in range(30)]
    _write_c4(offline_empty_data_dir, docs)
    for seed in (0, 3):
        got = calibration_windows(tokenizer, Calibration("c4", nsamples=12, seqlen=24, seed=seed))
        assert torch.equal(got.ids, reference_c4_windows(tokenizer, docs, 12, 24, seed))
    lengths = [len(tokenizer(d).input_ids) for d in docs]
    assert min(lengths) <= 24 < max(lengths)  # the re-draw rule was exercised


def test_corpus_windows_follow_the_reference_draws(offline_empty_data_dir, tokenizer):
    (offline_empty_data_dir / "ptb").mkdir()
    sentences = [f"sentence number {i} says the market fell {i % 7} points" for i in range(60)]
    (offline_empty_data_dir / "ptb" / "ptb.train.txt").write_text("".join(f" {s} \n" for s in sentences))
    got = calibration_windows(tokenizer, Calibration("ptb", nsamples=9, seqlen=16, seed=5))
    assert torch.equal(got.ids, reference_corpus_windows(tokenizer, " ".join(sentences), 9, 16, 5))
    assert got.description["split"] == "train" and got.description["corpus_tokens"] > 16


def test_real_c4_and_wikitext2_windows_shape_determinism_and_hash(shared_data_dir, tokenizer):
    for source in ("c4", "wikitext2"):  # (WikiText-2 tokenizes ~1 MB per call: two calls, the rest on C4)
        first = calibration_windows(tokenizer, Calibration(source, nsamples=4, seqlen=64, seed=0))
        other = calibration_windows(tokenizer, Calibration(source, nsamples=4, seqlen=64, seed=1))
        assert first.ids.shape == (4, 64) and first.ids.dtype == torch.int64
        assert not torch.equal(first.ids, other.ids) and first.sha256 != other.sha256
        if source == "c4":
            again = calibration_windows(tokenizer, Calibration(source, nsamples=4, seqlen=64, seed=0))
            assert torch.equal(first.ids, again.ids) and first.sha256 == again.sha256
        header = b"int64[4,64]"
        assert first.sha256 == hashlib.sha256(header + first.ids.numpy().astype("<i8").tobytes()).hexdigest()
        d = first.description
        assert (d["nsamples"], d["seqlen"], d["seed"]) == (4, 64, 0) and len(d["sha256"]) == 64 and d["path"]
    assert first.description["split"] == "validation"  # wikitext2 calibrates on validation (train not available)


def test_c4_reference_draws_on_the_real_sample(shared_data_dir, tokenizer):
    docs = [json.loads(line)["text"] for line in (shared_data_dir / "c4" / "c4_sample.jsonl").open()]
    got = calibration_windows(tokenizer, Calibration("c4", nsamples=3, seqlen=256, seed=0))
    assert torch.equal(got.ids, reference_c4_windows(tokenizer, docs, 3, 256, 0))


@pytest.mark.parametrize("source", ["wikitext2:test", "ptb:test", "c4:test"])
def test_test_split_is_refused_for_calibration(shared_data_dir, tokenizer, source):
    with pytest.raises(UserInputError, match="test split is the evaluation text"):
        calibration_windows(tokenizer, Calibration(source, nsamples=2, seqlen=8))


def test_c4_seqlen_longer_than_every_document_is_an_error(offline_empty_data_dir, tokenizer):
    _write_c4(offline_empty_data_dir, ["short one", "tiny", "a few words here"])
    with pytest.raises(UserInputError, match="no document is longer than --seqlen 64") as info:
        calibration_windows(tokenizer, Calibration("c4", nsamples=2, seqlen=64))
    assert "\n" not in str(info.value)


def test_bad_sizes_and_sources_are_one_line_errors(offline_empty_data_dir, tokenizer, tmp_path):
    text_file = tmp_path / "small.txt"
    text_file.write_text("only a handful of tokens")
    for sizes, fragment in [({"nsamples": 0}, "--nsamples 0"), ({"seqlen": 1}, "--seqlen 1"),
                            ({"nsamples": "8"}, "--nsamples '8'")]:
        with pytest.raises(UserInputError, match=fragment) as info:
            Calibration("c4", **sizes)  # refused when made, whatever made it (flags, a manifest, a spec)
        assert "\n" not in str(info.value)
    cases = [(Calibration("wikitxt2"), UserInputError, "unknown source"),
             (Calibration(str(text_file), nsamples=2, seqlen=512), UserInputError, "not more than --seqlen 512"),
             (Calibration("c4", nsamples=2, seqlen=8), DataNotFound, "LLMPRUNE_DATA_DIR"),
             (Calibration("self", nsamples=2, seqlen=8), UserInputError, "needs the model")]
    for calibration, error, fragment in cases:
        with pytest.raises(error, match=fragment) as info:
            calibration_windows(tokenizer, calibration)
        assert "\n" not in str(info.value)


def test_local_files_calibrate_as_one_corpus(tmp_path, tokenizer):
    records = [f"record {i}: sparse models skip the zeros in every row" for i in range(20)]
    (tmp_path / "notes.jsonl").write_text("".join(json.dumps({"text": r}) + "\n" for r in records))
    got = calibration_windows(tokenizer, Calibration(str(tmp_path / "notes.jsonl"), nsamples=5, seqlen=20, seed=2))
    assert torch.equal(got.ids, reference_corpus_windows(tokenizer, "\n\n".join(records), 5, 20, 2))
    assert got.description["origin"] == "file"


def test_self_source_dispatches_to_generation(tiny_lm):
    model, tokenizer = tiny_lm
    got = calibration_windows(tokenizer, Calibration("self:batch=2", nsamples=3, seqlen=6, seed=0), model=model)
    assert got.ids.shape == (3, 6) and got.description["source"] == "self" and got.description["batch"] == 2
