"""Perplexity: equal to a direct float64 computation (tests/reference/ppl_direct.py), the reference weighting, the
evaluation texts and bad input."""
from __future__ import annotations

import hashlib
import math

import pytest

from llmprune.errors import DataNotFound, UserInputError
from llmprune.evals.perplexity import PerplexityResult, default_seqlen, load_eval_text, perplexity
from tests.data_fixtures import offline_empty_data_dir, shared_data_dir, tiny_lm  # noqa: F401
from tests.reference.ppl_direct import direct_perplexity, reference_code_perplexity

TEXT = ("The lighthouse keeper logged the tide twice a day and painted the railings every spring. Her notebook "
        "listed ships, storms and the odd seal that slept on the jetty. Sparse matrices store only their non-zero "
        "entries, so pruning half of the weights halves the memory they need when the format is chosen well. ") * 3


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_perplexity_equals_direct_float64_computation(arch, batch_size):
    from tests.tiny_models import tiny_model, tiny_tokenizer

    model, _ = tiny_model(arch)
    tokenizer = tiny_tokenizer()
    ids = tokenizer(TEXT).input_ids
    seqlen = 37
    assert len(ids) % seqlen and len(ids) // seqlen >= 4  # a tail to drop and a short last batch when batch_size=3
    result = perplexity(model, tokenizer, TEXT, seqlen=seqlen, batch_size=batch_size, progress=False, dataset="t")
    expected = direct_perplexity(model, ids, seqlen)
    assert result.ppl == pytest.approx(expected, rel=1e-5)
    assert result.windows == len(ids) // seqlen and result.tokens == result.windows * (seqlen - 1)
    assert result.nll_mean == pytest.approx(math.log(expected), rel=1e-5)


def test_reference_weighting_gives_the_same_perplexity(tiny_lm):
    model, tokenizer = tiny_lm
    ids = tokenizer(TEXT).input_ids
    ours = perplexity(model, tokenizer, TEXT, seqlen=29, progress=False).ppl
    assert ours == pytest.approx(reference_code_perplexity(model, ids, 29), rel=1e-5)


def test_max_windows_caps_the_windows_scored(tiny_lm):
    model, tokenizer = tiny_lm
    ids = tokenizer(TEXT).input_ids
    result = perplexity(model, tokenizer, TEXT, seqlen=30, max_windows=2, progress=False)
    assert result.windows == 2 and result.ppl == pytest.approx(direct_perplexity(model, ids, 30, 2), rel=1e-5)
    assert result.available_windows == len(ids) // 30 > 2
    assert f"the first 2 of {len(ids) // 30} non-overlapping windows" in result.protocol()


@pytest.mark.parametrize("available, protocol, expected", [(None, None, None), (0, None, None), (None, 256, 256),
                                                           (40, None, 40), (40, 256, 40), (300, 256, 256)])
def test_perplexity_row_available_windows_is_the_smallest_known(available, protocol, expected):
    """Neither the text's windows nor a protocol cap known (a result built by hand): None, not min()'s ValueError."""
    result = PerplexityResult(ppl=2.0, nll_mean=math.log(2.0), windows=4, tokens=12, seqlen=4, dataset="t",
                              available_windows=available)
    assert result.row(protocol)["available_windows"] == expected


def test_protocol_line_names_dataset_seqlen_windows_tokens(tiny_lm):
    model, tokenizer = tiny_lm
    result = perplexity(model, tokenizer, TEXT, seqlen=40, progress=False, dataset="wikitext2")
    line = result.protocol()
    assert "\n" not in line
    for fragment in ("wikitext2", f"{result.windows} non-overlapping windows", "of 40 tokens", f"{result.tokens} "):
        assert fragment in line


def test_text_shorter_than_seqlen_and_bad_sizes_are_errors(tiny_lm):
    model, tokenizer = tiny_lm
    for kwargs, fragment in [({"seqlen": 4096}, "fewer than --seqlen 4096"), ({"seqlen": 1}, "--seqlen 1"),
                             ({"seqlen": 16, "batch_size": 0}, "--batch-size 0")]:
        with pytest.raises(UserInputError, match=fragment):
            perplexity(model, tokenizer, TEXT, progress=False, **kwargs)


def test_default_seqlen_uses_max_positions_capped(tiny_lm):
    from tests.tiny_models import tiny_model

    model, _ = tiny_lm
    assert default_seqlen(model) == 128 and default_seqlen(model, cap=64) == 64
    gpt2, _ = tiny_model("gpt2")
    assert default_seqlen(gpt2, cap=100) == 100 and default_seqlen(gpt2, cap=4096) == 128


def test_wikitext2_eval_text_is_the_papers_corpus(shared_data_dir):
    text = load_eval_text("wikitext2")
    assert text.name == "wikitext2" and text.max_windows is None
    assert hashlib.sha256(text.text.encode()).hexdigest() == \
        "696cca6b65a171b0a358a4be6732cdfdf2dd6164a32e20fd70e3c13fc4dfae83"


def test_eval_texts_from_files_and_ptb_layout(offline_empty_data_dir, tmp_path):
    (offline_empty_data_dir / "ptb").mkdir()
    (offline_empty_data_dir / "ptb" / "ptb.test.txt").write_text(" a b c \n d e \n")
    assert load_eval_text("ptb").text == "a b c d e"
    (tmp_path / "mine.jsonl").write_text('{"text": "one"}\n{"text": "two"}\n')
    assert load_eval_text(str(tmp_path / "mine.jsonl")).text == "one\n\ntwo"


def test_eval_text_errors_are_one_line(offline_empty_data_dir):
    cases = [("wikitxt2", UserInputError, "did you mean 'wikitext2'"), ("c4", DataNotFound, "c4_validation.jsonl"),
             ("wikitext2", DataNotFound, "LLMPRUNE_DATA_DIR"), ("nope.txt", DataNotFound, "not found")]
    for spec, error, fragment in cases:
        with pytest.raises(error, match=fragment) as info:
            load_eval_text(spec)
        assert "\n" not in str(info.value)


@pytest.mark.slow
def test_smollm2_perplexity_equals_direct_computation(shared_data_dir):
    from llmprune.model import resolve

    loaded = resolve("smollm2-135m")
    text = load_eval_text("wikitext2").text[:4000]
    ids = loaded.tokenizer(text).input_ids
    result = perplexity(loaded.model, loaded.tokenizer, text, seqlen=64, batch_size=2, max_windows=2, progress=False)
    assert result.windows == 2
    assert result.ppl == pytest.approx(direct_perplexity(loaded.model, ids, 64, max_windows=2), rel=1e-4)
    assert 1.5 < result.ppl < 200  # a trained model, not random (a random model scores ~vocab size, 49152)
