"""save -> load gives identical logits for tiny models in every format; dense output is a plain HF folder."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from llmprune import checkpoint
from llmprune.errors import UserInputError
from llmprune.formats import FORMATS
from llmprune.packed_linear import PackedLinear
from tests.packed_fixtures import pack_model_, swap_in_
from tests.tiny_models import tiny_model, tiny_tokenizer

IDS = torch.tensor([[0, 5, 17, 42, 99, 7, 250, 3]])


def _logits(model):
    with torch.no_grad():
        return model(IDS).logits


def _packed_tiny(arch: str, fmt: str):
    model, _ = tiny_model(arch)
    layers = pack_model_(model, fmt)
    packed = copy.deepcopy(model)
    swap_in_(packed, layers)
    return model, packed, layers


@pytest.mark.parametrize("fmt", [f for f in FORMATS.names() if f != "dense"])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_checkpoint_roundtrip_identical_logits(tmp_path, fmt, arch):
    dense, packed, layers = _packed_tiny(arch, fmt)
    out = checkpoint.save(dense, tmp_path / "out", layers=layers, manifest_extra={"recipe": {"x": 1}},
                          tokenizer=tiny_tokenizer())
    model, tokenizer, manifest = checkpoint.load(out)
    assert torch.equal(_logits(model), _logits(packed))
    assert manifest["format"] == fmt and manifest["recipe"] == {"x": 1}
    assert tokenizer is not None and isinstance(model.get_submodule(next(iter(layers))), PackedLinear)
    assert not any(k.endswith(".weight") and k.rpartition(".")[0] in layers for k in manifest["tensors"])


@pytest.mark.parametrize("arch", ["qwen2", "opt", "gemma2", "phi3"])
def test_checkpoint_roundtrip_other_archs(tmp_path, arch):
    dense, packed, layers = _packed_tiny(arch, "int4")
    model, _, _ = checkpoint.load(checkpoint.save(dense, tmp_path / "o", layers=layers))
    assert torch.equal(_logits(model), _logits(packed))


def test_checkpoint_resave_of_loaded_packed_model(tmp_path):
    dense, packed, layers = _packed_tiny("llama", "sparse24_int4")
    first, _, _ = checkpoint.load(checkpoint.save(dense, tmp_path / "a", layers=layers))
    second, _, manifest = checkpoint.load(checkpoint.save(first, tmp_path / "b"))
    assert torch.equal(_logits(second), _logits(packed)) and manifest["format"] == "sparse24_int4"


def test_checkpoint_dense_is_plain_hf_folder(tmp_path):
    from transformers import AutoModelForCausalLM

    dense, _, layers = _packed_tiny("llama", "dense")
    out = checkpoint.save(dense, tmp_path / "d", layers=layers, tokenizer=tiny_tokenizer())
    hf = AutoModelForCausalLM.from_pretrained(out)
    assert torch.equal(_logits(hf), _logits(dense))
    loaded, _, manifest = checkpoint.load(out)
    assert manifest["format"] == "dense" and torch.equal(_logits(loaded), _logits(dense))
    assert json.loads((out / "llmprune.json").read_text())["layers"]["model.layers.0.mlp.up_proj"]["format"] == "dense"


def test_checkpoint_tied_embeddings_are_stored_once(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, tie_word_embeddings=True)
    torch.manual_seed(0)
    dense = LlamaForCausalLM(config).eval()
    assert dense.lm_head.weight is dense.model.embed_tokens.weight
    layers = pack_model_(dense, "int4")
    packed = copy.deepcopy(dense)
    swap_in_(packed, layers)
    model, _, manifest = checkpoint.load(checkpoint.save(dense, tmp_path / "t", layers=layers))
    assert manifest["tied"] == {"lm_head.weight": "model.embed_tokens.weight"}
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert torch.equal(_logits(model), _logits(packed))


def test_checkpoint_multiple_shards(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "SHARD_BYTES", 20_000)
    dense, packed, layers = _packed_tiny("llama", "int4")
    model, _, manifest = checkpoint.load(checkpoint.save(dense, tmp_path / "s", layers=layers))
    assert len(manifest["shards"]) > 2
    assert torch.equal(_logits(model), _logits(packed))
    # transformers loads the same sharded folder (it needs save_pretrained's index file to find the shards)
    from transformers import AutoModelForCausalLM

    index = json.loads((tmp_path / "s" / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == sorted(s["name"] for s in manifest["shards"])
    assert set(index["weight_map"]) == set(manifest["tensors"])
    assert torch.equal(_logits(AutoModelForCausalLM.from_pretrained(tmp_path / "s").eval()), _logits(packed))


def test_checkpoint_load_casts_dense_tensors(tmp_path):
    dense, _, layers = _packed_tiny("llama", "int4")
    model, _, _ = checkpoint.load(checkpoint.save(dense, tmp_path / "c", layers=layers), dtype=torch.bfloat16)
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16
    assert model.model.layers[0].mlp.up_proj.scales.dtype == torch.float32  # packed tensors stay as stored
    assert model(IDS).logits.dtype == torch.bfloat16
    assert model.config.dtype == torch.bfloat16  # as from_pretrained(dtype=...) records it


@pytest.mark.parametrize("fmt", [f for f in FORMATS.names() if f != "dense"])
def test_checkpoint_resave_after_a_dtype_cast(tmp_path, fmt):
    """``model.to(bfloat16)`` converts the packed scales/values: the saved folder says so and loads back."""
    dense, packed, layers = _packed_tiny("llama", fmt)
    cast = packed.to(torch.bfloat16)
    module = cast.get_submodule(next(iter(layers)))
    floats = {t.dtype for t in module.packed().values() if t.is_floating_point()}
    assert floats == {torch.bfloat16} and module.params.get("dtype", "bfloat16") == "bfloat16"
    model, _, manifest = checkpoint.load(checkpoint.save(cast, tmp_path / "b"))
    saved, loaded = cast.state_dict(), model.state_dict()  # (logits differ: the cast also rounds RoPE's inv_freq)
    assert manifest["format"] == fmt and saved.keys() == loaded.keys()
    assert all(saved[k].dtype == loaded[k].dtype and torch.equal(saved[k], loaded[k]) for k in saved)


def test_checkpoint_refuses_float64_packed_layers_before_writing(tmp_path):
    _, packed, layers = _packed_tiny("llama", "int4")
    wide = packed.double()
    with pytest.raises(UserInputError, match=r"cannot be saved: storage dtype 'float64'.*\.to\(torch\.float32\)"):
        checkpoint.save(wide, tmp_path / "d")
    assert not (tmp_path / "d").exists() and not list(tmp_path.iterdir())
    checkpoint.save(wide.to(torch.float32), tmp_path / "d")  # the advice works (.float() is refused on a loaded one)
    assert (tmp_path / "d" / "llmprune.json").is_file()
