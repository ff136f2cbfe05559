"""Self-generated calibration: shape, determinism, and the KV-cache sampler against a no-cache oracle."""
from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest
import torch

from llmprune.data.calibration import calibration_windows
from llmprune.data.selfgen import parse_self_spec, start_token
from llmprune.errors import UserInputError
from llmprune.model.kv_cache import cache_keyword, returned_cache
from llmprune.recipe import Calibration
from tests.data_fixtures import tiny_lm  # noqa: F401


def _windows(model, tokenizer, source, nsamples=5, seqlen=12, seed=0):
    return calibration_windows(tokenizer, Calibration(source, nsamples=nsamples, seqlen=seqlen, seed=seed), model=model)


@torch.no_grad()
def no_cache_oracle(model, starts, seqlen, temperature, seed, batch):
    """Re-run the full prefix every step (no KV cache), softmax written out, same generator order."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for first in range(0, starts.shape[0], batch):
        ids = starts[first:first + batch]
        while ids.shape[1] < seqlen:
            z = model(ids).logits[:, -1, :].double() / temperature
            p = torch.exp(z - z.max(dim=-1, keepdim=True).values)
            p = (p / p.sum(dim=-1, keepdim=True)).float()
            ids = torch.cat([ids, torch.multinomial(p, 1, generator=generator)], dim=1)
        out.append(ids)
    return torch.cat(out)


def test_selfgen_shape_start_token_and_determinism(tiny_lm):
    model, tokenizer = tiny_lm
    first = _windows(model, tokenizer, "self:batch=2")
    again = _windows(model, tokenizer, "self:batch=2")
    other = _windows(model, tokenizer, "self:batch=2", seed=1)
    assert first.ids.shape == (5, 12) and first.ids.dtype == torch.int64
    assert torch.all(first.ids[:, 0] == tokenizer.bos_token_id)
    assert torch.equal(first.ids, again.ids) and first.sha256 == again.sha256
    assert not torch.equal(first.ids, other.ids)
    assert len({tuple(row.tolist()) for row in first.ids}) == 5  # sampled, not greedy: windows differ
    assert first.description["temperature"] == 1.0 and first.description["start"] == "bos"


def test_selfgen_matches_no_cache_sampler(tiny_lm):
    model, tokenizer = tiny_lm
    got = _windows(model, tokenizer, "self:temperature=0.8,batch=2", nsamples=5, seqlen=10, seed=4)
    starts = torch.full((5, 1), tokenizer.bos_token_id, dtype=torch.long)
    assert torch.equal(got.ids, no_cache_oracle(model, starts, 10, 0.8, seed=4, batch=2))


def test_selfgen_low_temperature_is_greedy(tiny_lm):
    model, tokenizer = tiny_lm
    got = _windows(model, tokenizer, "self:temperature=1e-4", nsamples=2, seqlen=8)
    ids = torch.full((1, 1), tokenizer.bos_token_id, dtype=torch.long)
    with torch.no_grad():
        while ids.shape[1] < 8:
            ids = torch.cat([ids, model(ids).logits[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(got.ids, ids.expand(2, -1))


def test_selfgen_random_start_draws_from_the_vocabulary(tiny_lm):
    model, tokenizer = tiny_lm
    got = _windows(model, tokenizer, "self:start=random", nsamples=6, seqlen=4, seed=3)
    expected_starts = torch.randint(0, len(tokenizer), (6, 1), generator=torch.Generator().manual_seed(3))
    assert torch.equal(got.ids[:, :1], expected_starts)
    assert int(got.ids.max()) < model.config.vocab_size and got.description["start_token"] is None


@pytest.mark.parametrize("spec,fragment", [("self:temperature=0", "temperature must be > 0"),
                                           ("self:temperature=hot", "not a number"),
                                           ("self:start=eos", "start must be"),
                                           ("self:batch=0", "batch must be at least 1"),
                                           ("self:top_k=5", "write self[")])
def test_self_spec_errors_are_one_line(spec, fragment):
    with pytest.raises(UserInputError) as info:
        parse_self_spec(spec)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_self_spec_defaults():
    assert parse_self_spec("self") == {"temperature": 1.0, "start": "bos", "batch": 16}


def test_no_bos_anywhere_is_an_error():
    nothing = SimpleNamespace(bos_token_id=None)
    model = SimpleNamespace(config=nothing, generation_config=nothing)
    with pytest.raises(UserInputError, match="self:start=random"):
        start_token(model, nothing)


def test_self_generation_shows_its_progress_unless_quiet(capsys):
    from llmprune.data.selfgen import self_generated_windows
    from llmprune.recipe import Calibration
    from tests.tiny_models import tiny_model, tiny_tokenizer

    model, _ = tiny_model("llama")
    calibration = Calibration("self", nsamples=2, seqlen=8)
    shown, _ = self_generated_windows(model, tiny_tokenizer(), calibration)
    assert "generating calibration text" in capsys.readouterr().err
    quiet, _ = self_generated_windows(model, tiny_tokenizer(), calibration, progress=False)
    assert capsys.readouterr().err == "" and torch.equal(shown, quiet)


def test_selfgen_passes_the_cache_by_the_models_own_keyword(tiny_lm):
    """transformers 5.24 renamed the forward's ``past_key_values`` to ``cache`` (the old name warns, and goes in
    5.40); transformers 5.18 knows only the old name. The sampler uses the one the model takes, so no warning."""
    model, tokenizer = tiny_lm
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        _windows(model, tokenizer, "self", nsamples=1, seqlen=6)

    class OlderForward(torch.nn.Module):
        def forward(self, input_ids, past_key_values=None, use_cache=None):
            return input_ids

    assert cache_keyword(OlderForward()) == "past_key_values"
    assert returned_cache({"past_key_values": 3}, "past_key_values") == 3
