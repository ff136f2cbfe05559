"""Decoder-layer and Linear discovery on every tiny architecture, Conv1D orientation, unsupported models."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from llmprune.errors import UnsupportedArchitecture
from llmprune.model.layers import decoder_layers, get_weight, in_features, linears, set_weight_
from tests.tiny_models import ARCHS, HIDDEN, INTERMEDIATE, LAYERS, tiny_model

EXPECTED = {  # (path of the decoder stack, Linear names of one block)
    "llama": ("model.layers", {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}),
    "opt": ("model.decoder.layers", {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                     "self_attn.out_proj", "fc1", "fc2"}),
    "gpt2": ("transformer.h", {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"}),
    "phi3": ("model.layers", {"self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj"}),
}
for _arch in ("mistral", "qwen2", "gemma2", "gemma3"):
    EXPECTED[_arch] = EXPECTED["llama"]


@pytest.mark.parametrize("arch", ARCHS)
def test_decoder_layers_found_for_every_arch(arch):
    model, _ = tiny_model(arch)
    layers, path = decoder_layers(model)
    assert path == EXPECTED[arch][0]
    assert layers is model.get_submodule(path)
    assert len(layers) == LAYERS
    found = linears(layers[0])
    assert set(found) == EXPECTED[arch][1]
    for name, module in found.items():
        assert module is layers[0].get_submodule(name)
        assert get_weight(module).shape[1] in (HIDDEN, INTERMEDIATE)
        assert in_features(module) % 16 == 0


@pytest.mark.parametrize("arch", ARCHS)
def test_linears_never_include_embeddings_or_lm_head(arch):
    model, _ = tiny_model(arch)
    layers, _ = decoder_layers(model)
    inside = {id(m) for layer in layers for m in linears(layer).values()}
    outside = [model.get_output_embeddings(), model.get_input_embeddings()]
    assert not any(id(m) in inside for m in outside)
    weights = {m.weight.data_ptr() for layer in layers for m in linears(layer).values()}
    assert model.get_output_embeddings().weight.data_ptr() not in weights


def test_get_weight_of_conv1d_is_out_by_in():
    torch.manual_seed(0)
    conv = Conv1D(nf=48, nx=32)
    nn.init.normal_(conv.bias)
    x = torch.randn(5, 32)
    W = get_weight(conv)
    assert W.shape == (48, 32)
    expected = conv(x) - conv.bias
    assert torch.allclose(x @ W.t(), expected, atol=1e-6)
    # the same orientation as nn.Linear: a Linear holding W reproduces the Conv1D
    linear = nn.Linear(32, 48)
    with torch.no_grad():
        linear.weight.copy_(W)
        linear.bias.copy_(conv.bias)
    assert torch.allclose(linear(x), conv(x), atol=1e-6)


def test_set_weight_conv1d_transposes_into_storage():
    conv = Conv1D(nf=48, nx=32)
    new = torch.arange(48 * 32, dtype=torch.float32).reshape(48, 32)
    param = conv.weight
    set_weight_(conv, new)
    assert conv.weight is param
    assert torch.equal(conv.weight.data, new.t())
    assert torch.equal(get_weight(conv), new)


def test_set_weight_keeps_parameter_dtype_and_ties():
    linear = nn.Linear(16, 8).to(torch.bfloat16)
    param = linear.weight
    other = nn.Linear(16, 8).to(torch.bfloat16)
    other.weight = param  # tied
    new = torch.randn(8, 16, dtype=torch.float32)
    set_weight_(linear, new)
    assert linear.weight is param and other.weight is param
    assert param.dtype == torch.bfloat16
    assert torch.equal(param.data, new.to(torch.bfloat16))


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_set_weight_replaces_the_storage_and_never_writes_the_old_one(kind, tmp_path):
    """A weight loaded from safetensors lives in a private mmap of the file: writing it would turn its pages into
    anonymous memory for as long as the file stays mapped. The old storage must keep its values (never written),
    the module (and a tie through the same Parameter) see the new ones, and the storage must be the module's own."""
    from safetensors.torch import load_file, save_file

    module = nn.Linear(32, 48) if kind == "linear" else Conv1D(nf=48, nx=32)
    save_file({"w": module.weight.detach().contiguous()}, tmp_path / "w.safetensors")
    mapped = load_file(tmp_path / "w.safetensors")["w"]
    module.weight = nn.Parameter(mapped, requires_grad=False)
    original, param = mapped.clone(), module.weight
    new = torch.randn(48, 32)
    set_weight_(module, new)
    assert module.weight is param and torch.equal(get_weight(module), new)
    assert torch.equal(mapped, original)  # the mapped storage was not written
    assert module.weight.data_ptr() != mapped.data_ptr() and module.weight.is_contiguous()
    new.zero_()  # the module's weight is its own copy, not the caller's tensor
    assert get_weight(module).abs().sum() > 0


def test_set_weight_rejects_wrong_shape():
    with pytest.raises(ValueError, match="shape"):
        set_weight_(nn.Linear(16, 8), torch.zeros(16, 8))


def test_unsupported_model_raises_one_line_error():
    model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 8))
    with pytest.raises(UnsupportedArchitecture) as info:
        decoder_layers(model)
    message = str(info.value)
    assert "\n" not in message and "Sequential" in message and "decoder layers" in message


def test_block_without_linears_is_unsupported():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = nn.LayerNorm(8)

    model = nn.Module()
    model.layers = nn.ModuleList([Block(), Block()])
    with pytest.raises(UnsupportedArchitecture):
        decoder_layers(model)
    with pytest.raises(UnsupportedArchitecture, match="no nn.Linear"):
        linears(Block())


def test_decoder_stack_preferred_over_inner_lists_by_layer_count():
    """An inner per-block list (e.g. MoE experts) longer than the stack must not win when the config names the count."""

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.experts = nn.ModuleList([nn.Linear(8, 8) for _ in range(4)])

    model = nn.Module()
    model.config = type("Config", (), {"num_hidden_layers": 2})()
    model.blocks = nn.ModuleList([Block(), Block()])
    layers, path = decoder_layers(model)
    assert path == "blocks" and layers is model.blocks


def test_weights_no_linear_holds_are_listed_as_kept_dense():
    """A hybrid model's depthwise conv kernel is nothing llmprune compresses: the report says so (it used to be left
    dense without a word)."""
    import transformers as tf

    from llmprune import Recipe
    from llmprune.compress import compress_
    from llmprune.recipe import parse_sparsity

    config = tf.Lfm2Config(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, layer_types=["conv", "full_attention"],
                           block_auto_adjust_ff_dim=False)
    model = tf.Lfm2ForCausalLM(config).eval()
    report = compress_(model, Recipe(method="magnitude", sparsity=parse_sparsity("0.5")), progress=False)
    conv = {name: p for name, p in model.named_parameters() if p.ndim >= 2 and "conv.conv" in name}
    assert conv and {name: report.skipped.get(name) for name in conv} == dict.fromkeys(conv,
                                                                                       "not a Linear (kept dense)")
    assert not any(name.endswith("proj.weight") for name in report.skipped)
