"""Engine statistics against direct float64 formulas on inputs captured by an independent hook on a plain forward."""
from __future__ import annotations

import pytest
import torch

from llmprune.engine import STAT_NAMES, InputStats, run_sequential_
from llmprune.model.layers import decoder_layers, linears
from tests.tiny_models import VOCAB, tiny_model


class Recorder:
    def __init__(self, needs):
        self._needs = frozenset(needs)
        self.stats = {}

    def needs(self, name):
        return self._needs

    def __call__(self, name, weight, stats):
        self.stats[name] = stats
        return weight


@torch.no_grad()
def _direct_inputs(model, ids) -> dict[str, torch.Tensor]:
    """Each decoder Linear's input [tokens, in] in float64, from one plain forward of the (unchanged) model."""
    layers, path = decoder_layers(model)
    found, handles = {}, []
    for index, layer in enumerate(layers):
        for name, module in linears(layer).items():
            key = f"{path}.{index}.{name}"
            handles.append(module.register_forward_pre_hook(
                lambda m, args, key=key: found.__setitem__(key, args[0].reshape(-1, args[0].shape[-1]).double())))
    model(ids, use_cache=False)
    for handle in handles:
        handle.remove()
    return found


def _direct_stats(X: torch.Tensor) -> dict[str, torch.Tensor]:
    T = X.shape[0]
    return {"hessian": 2 * X.t() @ X / T, "input_sq_norms": (X * X).sum(0) / T, "input_mean": X.mean(0),
            "input_var": X.var(0, unbiased=False)}


@pytest.mark.parametrize("arch", ["llama", "opt", "gpt2", "phi3"])
def test_engine_stats_equal_direct_formulas(arch):
    model, _ = tiny_model(arch)
    ids = torch.randint(2, VOCAB, (5, 10), generator=torch.Generator().manual_seed(1))
    inputs = _direct_inputs(model, ids)  # identity task: the model is unchanged, so these are the engine's inputs
    task = Recorder(STAT_NAMES)
    run_sequential_(model, ids, task, batch_size=2, progress=False)  # batches of 2, 2, 1: unequal running merges
    assert set(task.stats) == set(inputs)
    for name, X in inputs.items():
        stats, expected = task.stats[name], _direct_stats(X)
        assert stats.tokens == X.shape[0] == 50
        for field, value in expected.items():
            got = getattr(stats, field)
            assert got.dtype == torch.float32, field
            scale = value.abs().max().item()
            torch.testing.assert_close(got.double(), value, rtol=1e-5, atol=1e-5 * scale, msg=f"{name} {field}")


def test_qkv_and_gate_up_share_one_accumulator():
    model, _ = tiny_model("llama")
    ids = torch.randint(2, VOCAB, (3, 8), generator=torch.Generator().manual_seed(2))
    task = Recorder({"hessian", "input_sq_norms"})
    info = run_sequential_(model, ids, task, progress=False)
    prefix = "model.layers.0"
    q, k, v = (task.stats[f"{prefix}.self_attn.{p}_proj"] for p in "qkv")
    assert torch.equal(q.hessian, k.hessian) and torch.equal(q.hessian, v.hessian)
    assert q.hessian is not k.hessian  # each task call gets its own copy (a task may edit H in place)
    o = task.stats[f"{prefix}.self_attn.o_proj"]
    assert not torch.equal(q.input_sq_norms, o.input_sq_norms)
    gate, up = task.stats[f"{prefix}.mlp.gate_proj"], task.stats[f"{prefix}.mlp.up_proj"]
    assert torch.equal(gate.hessian, up.hessian)
    assert info["layers"][0]["shared_inputs"] == [
        [f"{prefix}.self_attn.{p}_proj" for p in "qkv"], [f"{prefix}.mlp.gate_proj", f"{prefix}.mlp.up_proj"]]


def test_only_needed_stats_are_computed():
    model, _ = tiny_model("llama")
    ids = torch.randint(2, VOCAB, (2, 8), generator=torch.Generator().manual_seed(3))
    task = Recorder({"input_sq_norms"})
    run_sequential_(model, ids, task, progress=False)
    for stats in task.stats.values():
        assert stats.input_sq_norms is not None
        assert stats.hessian is None and stats.input_mean is None and stats.input_var is None


class MixedNeeds(Recorder):
    """q needs the Hessian, k only the squared norms, v nothing; all three read the same tensor."""

    def needs(self, name):
        return {"q_proj": {"hessian"}, "k_proj": {"input_sq_norms"}}.get(name.rsplit(".", 1)[-1], frozenset())


def test_shared_accumulator_computes_the_union_of_its_members_needs():
    model, _ = tiny_model("llama")
    ids = torch.randint(2, VOCAB, (2, 8), generator=torch.Generator().manual_seed(4))
    task = MixedNeeds(())
    run_sequential_(model, ids, task, progress=False)
    q, k, v = (task.stats[f"model.layers.0.self_attn.{p}_proj"] for p in "qkv")
    assert q.hessian is not None and k.input_sq_norms is not None and torch.equal(q.hessian, k.hessian)
    assert v.hessian is None and v.tokens == 0  # no needs: no accumulator


def test_input_stats_variance_is_stable_for_large_means():
    """E[x²]−E[x]² would cancel in float32 here; Chan's pairwise merge keeps the variance."""
    g = torch.Generator().manual_seed(0)
    X = 1000.0 + 0.01 * torch.randn(4000, 8, generator=g, dtype=torch.float64)
    acc = InputStats(8, frozenset({"input_var", "input_mean"}), "cpu")
    for chunk in X.float().split(700):
        acc.update(chunk)
    stats = acc.to_stats()
    torch.testing.assert_close(stats.input_var.double(), X.float().double().var(0, unbiased=False), rtol=1e-3, atol=0)
    assert stats.input_sq_norms is None and stats.hessian is None


def test_input_stats_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown statistics"):
        InputStats(4, frozenset({"fisher"}), "cpu")


def test_statistics_pass_stops_after_the_last_needed_input():
    """From the second batch on, the statistics forward ends at the last hooked Linear's input (its matmul skipped)."""
    model, _ = tiny_model("llama")
    ids = torch.randint(2, VOCAB, (3, 8), generator=torch.Generator().manual_seed(5))
    layer = model.model.layers[0]
    calls = {"down": 0, "o": 0}
    layer.mlp.down_proj.register_forward_hook(lambda *a: calls.__setitem__("down", calls["down"] + 1))
    layer.self_attn.o_proj.register_forward_hook(lambda *a: calls.__setitem__("o", calls["o"] + 1))
    task = Recorder(STAT_NAMES)
    run_sequential_(model, ids, task, batch_size=1, progress=False)
    assert calls == {"down": 1 + 3, "o": 3 + 3}  # stats pass: only batch 1 runs down_proj; then the propagation pass
    assert task.stats["model.layers.0.mlp.down_proj"].tokens == 24  # its input was still recorded every time


@pytest.mark.parametrize("dim", [1030, 1024 + 256])  # a ragged last block and an exact multiple of the block
def test_wide_hessian_upper_triangle_accumulation_equals_the_full_gram(dim):
    """Wide inputs accumulate only the upper block triangle; the mirrored result is the float64 2·XᵀX/T."""
    from llmprune.engine.stats import TRIANGLE_BLOCK

    assert dim >= 4 * TRIANGLE_BLOCK  # the triangle path is the one under test
    gen = torch.Generator().manual_seed(0)
    mix = torch.randn(dim, dim, generator=gen) / dim ** 0.5
    batches = [torch.randn(2, 40, dim, generator=gen) @ mix for _ in range(3)]  # correlated features
    acc = InputStats(dim, frozenset({"hessian"}), "cpu")
    for x in batches:
        acc.update(x)
    X = torch.cat([x.reshape(-1, dim) for x in batches]).double()
    expected = 2 * X.t() @ X / X.shape[0]
    H = acc.to_stats().hessian
    assert torch.equal(H, H.t())
    assert torch.allclose(H.double(), expected, rtol=1e-4, atol=1e-5)
