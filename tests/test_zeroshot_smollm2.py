"""Zero-shot on the real SmolLM2-135M-Instruct: ARC-Easy above chance (dense), and a packed checkpoint as llmprune
loads it giving the same answers as its dense twin (the same weights held as plain Linear layers)."""
from __future__ import annotations

import pytest

from llmprune.evals.zeroshot import run_zeroshot

# Measured on this machine (lm-eval 0.4.13, local ARC-Easy test file): dense SmolLM2-135M-Instruct scores acc 0.49
# on the first 100 questions (chance is about 0.25 with 4 choices). 50 questions keep the test short; the 0.35
# threshold sits more than two standard errors (2 x 0.07) below the measured rate and well above chance.
LIMIT = 50
THRESHOLD = 0.35


@pytest.mark.slow
def test_zeroshot_smollm2_arc_easy_above_chance(smollm2):
    result = run_zeroshot(smollm2.model, smollm2.tokenizer, ["arc_easy"], limit=LIMIT, batch_size=16)
    score = result.scores[0]
    assert score.task == "arc_easy" and score.source == "local" and score.samples == LIMIT
    assert score.acc > THRESHOLD, result.table()


@pytest.mark.slow
def test_zeroshot_smollm2_packed_same_answers_as_dense_twin(tmp_path):
    from llmprune import checkpoint
    from llmprune.model import resolve
    from llmprune.packed_linear import PackedLinear
    from tests.packed_fixtures import pack_model_

    twin = resolve("smollm2-135m")  # a private copy: packing rewrites its Linear weights
    layers = pack_model_(twin.model, "sparse24_int4")  # twin now holds exactly the weights the packed layers store
    checkpoint.save(twin.model, tmp_path / "packed", layers=layers, tokenizer=twin.tokenizer)
    packed, tokenizer, manifest = checkpoint.load(tmp_path / "packed")
    assert manifest["format"] == "sparse24_int4"
    assert sum(isinstance(m, PackedLinear) for m in packed.modules()) == len(layers) > 0
    dense = run_zeroshot(twin.model, twin.tokenizer, ["arc_easy"], limit=20, batch_size=16)
    compressed = run_zeroshot(packed, tokenizer, ["arc_easy"], limit=20, batch_size=16)
    assert compressed.answers == dense.answers
    for got, want in zip(compressed.loglikelihoods["arc_easy"], dense.loglikelihoods["arc_easy"]):
        assert got == pytest.approx(want, rel=1e-4, abs=1e-3)
