"""Static-cache decoding (evals/static_decode.py): its greedy tokens equal transformers' ``generate`` (dynamic cache,
an independent code path) for dense and packed models, state resets between runs, compiled tracing, clear errors,
and (CUDA only) the captured-graph replay equals the eager step."""
from __future__ import annotations

import pytest
import torch

from llmprune.errors import UserInputError
from llmprune.evals import bench, random_models
from llmprune.evals.static_decode import StaticDecoder


pytestmark = pytest.mark.usefixtures("one_thread")


def _prompt(batch: int, length: int = 5) -> torch.Tensor:
    return torch.randint(0, 256, (batch, length), generator=torch.Generator().manual_seed(batch))


@pytest.mark.parametrize("fmt", ["dense", "int4", "sparse24_int4", "spqr"])
def test_tokens_equal_generate(fmt):
    model = random_models.build_random("tiny", fmt, "cpu", "float32", seed=1)
    for batch in (1, 3):
        prompt = _prompt(batch)
        decoder = StaticDecoder(model, batch, max_len=12)
        got = decoder.generate(prompt, 7)
        assert got.shape == (batch, 7)
        assert torch.equal(got, bench.greedy(model, prompt, 7))
        assert int(decoder.slot) == 7  # one token written per step, after the prefill's


@pytest.mark.parametrize("new_tokens", [2, 3, 6])
def test_bench_cache_fits_the_warmup_and_the_timed_decode(new_tokens):
    """The cache ``bench`` sizes (``max_len_for``) holds the prompt and the most tokens either phase writes, counted
    here by the decoder's own write slot after the warm-up (3 tokens: more than a 2-token run's)."""
    from llmprune.evals.static_decode import max_len_for

    model = random_models.build_random("tiny", "int4", "cpu", "float32", seed=5)
    prompt = _prompt(1, 4)
    decoder = StaticDecoder(model, 1, max_len_for(4, new_tokens))
    decoder.prepare(prompt)
    warmup_tokens = int(decoder.slot)
    assert warmup_tokens == 3
    assert decoder.max_len == 4 + max(warmup_tokens, new_tokens)
    assert torch.equal(decoder.generate(prompt, new_tokens), bench.greedy(model, prompt, new_tokens))


def test_state_resets_between_prompts():
    """A second prompt on the same decoder (same cache storage, reset in place) gives that prompt's own tokens."""
    model = random_models.build_random("tiny", "int4", "cpu", "float32", seed=2)
    decoder = StaticDecoder(model, 2, max_len=16)
    first, second = _prompt(2, 6), _prompt(2, 6).flip(-1)
    decoder.prepare(first)
    a = decoder.generate(first, 5)
    b = decoder.generate(second, 5)
    assert torch.equal(a, bench.greedy(model, first, 5)) and torch.equal(b, bench.greedy(model, second, 5))
    assert not torch.equal(a, b)


def test_compiled_step_traces_the_same_tokens():
    model = random_models.build_random("tiny", "sparse24_int4", "cpu", "float32", seed=3)
    prompt = _prompt(2)
    decoder = StaticDecoder(model, 2, max_len=12, mode="compile", backend="eager")
    decoder.prepare(prompt)
    assert torch.equal(decoder.generate(prompt, 6), bench.greedy(model, prompt, 6))


def test_run_bench_static_compile_rows(monkeypatch):
    monkeypatch.setattr(bench, "COMPILE_BACKEND", "eager")
    result = bench.run_bench("tiny", ["int4"], [2], new_tokens=3, prompt_len=4, device="cpu", dtype="float32",
                             variants=["eager", "static+compile"], runs=1)
    rows = {(r["format"], r["variant"]): r for r in result["rows"]}
    assert set(rows) == {(f, v) for f in ("dense", "int4") for v in ("eager", "static+compile")}
    assert [r["agree"] for (f, v), r in sorted(rows.items()) if v == "eager"] == [None, None]
    assert all(r["agree"] == 1.0 for (f, v), r in rows.items() if v == "static+compile")
    assert rows[("int4", "static+compile")]["tokens_per_s"] > 0
    assert "| 100% |" in bench.format_table(result)


def test_a_failing_static_variant_is_reported_not_fatal(monkeypatch):
    """A graph-capture or compile failure on the GPU costs its rows only: NaN tokens/s and the error in the table."""
    def broken(self, prompt, warmup=2):
        raise RuntimeError("operation not permitted when stream is capturing\nmore detail")

    monkeypatch.setattr(bench, "COMPILE_BACKEND", "eager")
    monkeypatch.setattr(StaticDecoder, "prepare", broken)
    result = bench.run_bench("tiny", ["int4"], [1], new_tokens=3, prompt_len=2, device="cpu", dtype="float32",
                             variants=["eager", "static+compile"], runs=1)
    rows = {(r["format"], r["variant"]): r for r in result["rows"]}
    assert rows[("int4", "eager")]["error"] is None and rows[("int4", "eager")]["tokens_per_s"] > 0
    failed = rows[("int4", "static+compile")]
    assert failed["tokens_per_s"] != failed["tokens_per_s"]  # NaN
    assert failed["error"] == "RuntimeError: operation not permitted when stream is capturing"
    assert "(failed: RuntimeError: operation not permitted" in bench.format_table(result)


@pytest.mark.parametrize("kwargs,needle", [
    (dict(mode="graph"), "needs the model on CUDA"),
    (dict(mode="fast"), "choose one of eager, graph, compile"),
])
def test_bad_mode_one_line(kwargs, needle):
    model = random_models.build_random("tiny", "dense", "cpu", "float32")
    with pytest.raises(UserInputError, match="^[^\n]*$") as info:
        StaticDecoder(model, 1, 8, **kwargs)
    assert needle in str(info.value)


def test_cache_too_small_and_wrong_batch():
    model = random_models.build_random("tiny", "dense", "cpu", "float32")
    decoder = StaticDecoder(model, 1, 8)
    with pytest.raises(UserInputError, match="exceed the static cache"):
        decoder.generate(_prompt(1, 5), 4)
    with pytest.raises(UserInputError, match="prompt batch 2"):
        decoder.generate(_prompt(2, 2), 2)


def test_unknown_bench_variant():
    with pytest.raises(UserInputError, match="unknown variant 'graphs'"):
        bench.check_inputs("tiny", ["int4"], [1], "cpu", "float32", ["graphs"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
def test_graph_replay_equals_eager_step_on_cuda():
    model = random_models.build_random("tiny", "int4", "cuda", "float16", seed=4)
    prompt = _prompt(2).cuda()
    eager = StaticDecoder(model, 2, 16).generate(prompt, 8)
    graph = StaticDecoder(model, 2, 16, mode="graph")
    graph.prepare(prompt)
    assert graph.graph is not None
    assert torch.equal(graph.generate(prompt, 8), eager)
