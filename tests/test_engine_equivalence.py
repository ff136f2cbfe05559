"""The layer-by-layer propagation reproduces the full model's forward, for every tiny architecture."""
from __future__ import annotations

import pytest
import torch

from llmprune.engine import STAT_NAMES, capture_inputs, run_sequential_, run_without_calibration_
from llmprune.model.layers import decoder_layers, get_weight, linears
from tests.tiny_models import ARCHS, VOCAB, tiny_model

SEQLEN = 12  # longer than the tiny sliding window (4), so sliding and global layers see different masks


class Identity:
    """A task that returns every weight unchanged (it still goes through get_weight / set_weight_)."""

    def __init__(self, needs=frozenset()):
        self._needs = frozenset(needs)
        self.seen: list[str] = []

    def needs(self, name):
        return self._needs

    def __call__(self, name, weight, stats):
        self.seen.append(name)
        return weight


def _ids(n=5, seed=0):
    return torch.randint(2, VOCAB, (n, SEQLEN), generator=torch.Generator().manual_seed(seed))


def _record_layer_outputs(layers):
    """Forward hooks that keep every output of every decoder layer, in call order."""
    outputs = [[] for _ in layers]

    def hook(index):
        return lambda module, args, out: outputs[index].append(out[0] if isinstance(out, tuple) else out)

    return outputs, [layer.register_forward_hook(hook(i)) for i, layer in enumerate(layers)]


@torch.no_grad()
def _reference(model, ids):
    """Hidden states at every layer boundary from one plain forward: output_hidden_states for the inner boundaries,
    a forward hook for the last layer's output (HF's last hidden state has the final norm applied)."""
    layers, _ = decoder_layers(model)
    outputs, handles = _record_layer_outputs(layers)
    out = model(ids, output_hidden_states=True, use_cache=False)
    for handle in handles:
        handle.remove()
    return list(out.hidden_states[:-1]), outputs[-1][0]


@pytest.mark.parametrize("needs", [frozenset(), STAT_NAMES], ids=["no-stats", "all-stats"])
@pytest.mark.parametrize("arch", ARCHS)
def test_engine_identity_task_reproduces_hidden_states(arch, needs):
    model, _ = tiny_model(arch)
    ids = _ids()
    boundaries, final = _reference(model, ids)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    layers, _ = decoder_layers(model)
    captured = capture_inputs(model, ids, batch_size=2)
    torch.testing.assert_close(torch.cat(captured.hidden), boundaries[0], atol=1e-6, rtol=0)
    outputs, handles = _record_layer_outputs(layers)
    task = Identity(needs)
    run_sequential_(model, ids, task, batch_size=2, progress=False)
    for handle in handles:
        handle.remove()
    batches = 3  # 5 samples in batches of 2, 2, 1; the last pass over each layer produced the next inputs
    propagated = [torch.cat(outs[-batches:]) for outs in outputs]
    for index in range(len(layers) - 1):
        torch.testing.assert_close(propagated[index], boundaries[index + 1], atol=1e-5, rtol=0)
    torch.testing.assert_close(propagated[-1], final, atol=1e-5, rtol=0)
    expected_calls = sum(len(linears(layer)) for layer in layers)
    assert len(task.seen) == expected_calls
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name]), name


def _eager_gemma2():
    """Eager attention, whose layers each get a 4D mask tensor (transformers 5.24's default for Gemma2; with sdpa,
    5.20 hands global layers no mask at all, and these tests would check nothing there)."""
    model, config = tiny_model("gemma2")
    model.set_attn_implementation("eager")
    return model, config


def test_gemma_layers_receive_their_own_masks():
    """Gemma2 alternates sliding and global attention: the captured arguments must differ per layer type."""
    model, config = _eager_gemma2()
    assert config.layer_types == ["sliding_attention", "full_attention"]
    captured = capture_inputs(model, _ids(4), batch_size=2)
    sliding, full = captured.calls[0][0].kwargs["attention_mask"], captured.calls[0][1].kwargs["attention_mask"]
    assert sliding.shape == full.shape and not torch.equal(sliding, full)
    # eager 4D masks of equal-shape batches are stored once, not once per batch
    assert captured.calls[1][0] is captured.calls[0][0] and captured.calls[1][1] is captured.calls[0][1]


class HalveRows:
    """Zero the second half of every row: a deterministic 'compression' whose effect must propagate."""

    def __init__(self):
        self.stats = {}

    def needs(self, name):
        return frozenset({"hessian"})

    def __call__(self, name, weight, stats):
        self.stats[name] = stats
        new = weight.clone()
        new[:, weight.shape[1] // 2:] = 0
        return new


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_next_layer_inputs_come_from_the_compressed_layer(arch):
    """Layer 1's statistics equal those of layer 1's inputs in the *compressed* model, as the reference code does."""
    model, _ = tiny_model(arch)
    ids = _ids(4)
    task = HalveRows()
    run_sequential_(model, ids, task, batch_size=4, progress=False)
    layers, path = decoder_layers(model)
    name, module = next(iter(linears(layers[1]).items()))
    inputs = []
    handle = module.register_forward_pre_hook(lambda m, args: inputs.append(args[0]))
    with torch.no_grad():
        model(ids, use_cache=False)
    handle.remove()
    X = inputs[0].reshape(-1, inputs[0].shape[-1]).double()
    expected = 2 * X.t() @ X / X.shape[0]
    got = task.stats[f"{path}.1.{name}"].hessian.double()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert (get_weight(module)[:, get_weight(module).shape[1] // 2:] == 0).all()


class Negate:
    def __init__(self, wanted):
        self.wanted = wanted
        self.stats = []

    def needs(self, name):
        return frozenset()

    def wants(self, name):
        return self.wanted in name

    def __call__(self, name, weight, stats):
        self.stats.append(stats)
        return -weight


def test_run_without_calibration_visits_wanted_linears_only_and_runs_no_forward():
    model, _ = tiny_model("llama")
    layers, _ = decoder_layers(model)
    before = {n: m.weight.detach().clone() for n, m in linears(layers[0]).items()}
    calls = []
    handle = model.register_forward_pre_hook(lambda m, args: calls.append(1))
    task = Negate("mlp.")
    info = run_without_calibration_(model, task, progress=False)
    handle.remove()
    assert not calls
    assert all(s.hessian is None and s.input_sq_norms is None and s.tokens == 0 for s in task.stats)
    assert len(task.stats) == 3 * len(layers)
    for name, module in linears(layers[0]).items():
        expected = -before[name] if name.startswith("mlp.") else before[name]
        assert torch.equal(module.weight, expected), name
    assert info["layers"][0]["modules"] == [f"model.layers.0.mlp.{p}" for p in ("gate_proj", "up_proj", "down_proj")]


def test_engine_rejects_bad_calibration_ids():
    model, _ = tiny_model("llama")
    with pytest.raises(ValueError, match="calib_ids"):
        run_sequential_(model, torch.zeros(3, 4), Identity(), progress=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_engine_on_cuda_matches_cpu_and_keeps_model_on_cpu():
    model, _ = tiny_model("llama")
    ids = _ids()
    boundaries, final = _reference(model, ids)
    layers, _ = decoder_layers(model)
    outputs, handles = _record_layer_outputs(layers)
    run_sequential_(model, ids, Identity(STAT_NAMES), device="cuda", batch_size=2, progress=False)
    for handle in handles:
        handle.remove()
    assert all(p.device.type == "cpu" for p in model.parameters())
    torch.testing.assert_close(torch.cat(outputs[-1][-3:]).cpu(), final, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("forward_dtype", [None, torch.bfloat16])
def test_a_captured_input_can_be_reused_across_runs(forward_dtype):
    """A sweep captures once and compresses several times: the engine must leave the given Captured untouched."""
    ids = _ids()
    results = []
    for reuse in (False, True):
        model, _ = _eager_gemma2()
        captured = capture_inputs(model, ids, batch_size=2)
        kept = [h.clone() for h in captured.hidden]
        calls = [list(c) for c in captured.calls]
        masks = [c.kwargs["attention_mask"].clone() for c in captured.calls[0]]
        task = HalveRows()
        run_sequential_(model, captured if reuse else ids, task, batch_size=2, progress=False,
                        forward_dtype=forward_dtype)
        results.append(task.stats)
        assert all(torch.equal(h, k) for h, k in zip(captured.hidden, kept))
        assert [list(c) for c in captured.calls] == calls
        assert all(torch.equal(c.kwargs["attention_mask"], m) for c, m in zip(captured.calls[0], masks))
    for name, stats in results[0].items():
        assert torch.equal(stats.hessian, results[1][name].hessian), name
