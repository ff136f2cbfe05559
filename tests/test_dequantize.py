"""``model.dequantize()`` on packed models from either loader gives back the dense model the architecture defines:
GPT-2's ``Conv1D`` layers (so ``save_pretrained`` writes a folder GPT-2 loads), in the dtype the model computes in (so a
16-bit model still runs, and saves one dtype)."""
from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file
from transformers.pytorch_utils import Conv1D

from llmprune import checkpoint
from llmprune.packed_linear import PackedLinear
from tests.packed_fixtures import pack_model_
from tests.tiny_models import tiny_model

IDS = torch.tensor([[0, 5, 17, 42, 99, 7, 250, 3]])


def _logits(model):
    with torch.no_grad():
        return model(IDS).logits


def _from_pretrained(path, **kwargs):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, **kwargs).eval()


def _load(loader: str, path, dtype=None):
    if loader == "llmprune":
        return checkpoint.load(path, dtype=dtype)[0]
    return _from_pretrained(path, **({} if dtype is None else {"dtype": dtype}))


def _save_packed(directory, arch: str, fmt: str):
    """A packed checkpoint (float32 storage) and the plain transformers model holding its dense weights."""
    dense, _ = tiny_model(arch)
    layers = pack_model_(dense, fmt)  # ``dense`` now holds exactly the weights the packed tensors decode to
    return checkpoint.save(dense, directory, layers=layers), dense, layers


@pytest.mark.parametrize("fmt", ["int4", "sparse24_int4", "spqr"])
@pytest.mark.parametrize("loader", ["llmprune", "transformers"])
def test_dequantized_gpt2_saves_a_folder_gpt2_loads(tmp_path, loader, fmt):
    out, dense, layers = _save_packed(tmp_path / "packed", "gpt2", fmt)
    model = _load(loader, out)
    model.dequantize()
    model.save_pretrained(tmp_path / "plain")
    reloaded = _from_pretrained(tmp_path / "plain")
    for name in layers:  # c_attn, c_fc, mlp.c_proj: [in, out] differs from [out, in]; attn.c_proj is square
        layer = reloaded.get_submodule(name)
        assert type(layer) is Conv1D and type(model.get_submodule(name)) is Conv1D
        torch.testing.assert_close(layer.weight, dense.get_submodule(name).weight, rtol=0, atol=1e-6)
    assert torch.equal(_logits(reloaded), _logits(model))
    torch.testing.assert_close(_logits(reloaded), _logits(dense), rtol=1e-5, atol=1e-5)


ROUTES = {  # a 16-bit packed model, as each loader gives it
    "llmprune.load(dtype=)": lambda out, dtype: _load("llmprune", out, dtype),
    "llmprune.load().to()": lambda out, dtype: _load("llmprune", out).to(dtype),
    "from_pretrained(dtype=)": lambda out, dtype: _load("transformers", out, dtype),
    "from_pretrained().to()": lambda out, dtype: _load("transformers", out).to(dtype),
}


@pytest.mark.parametrize("arch", ["llama", "gpt2"])  # without biases; with biases and Conv1D
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("route", list(ROUTES))
def test_dequantize_keeps_the_dtype_the_model_computes_in(tmp_path, arch, dtype, route):
    """transformers dequantizes to ``config.dtype``, which neither ``.to()`` nor ``llmprune.load(dtype=...)``
    updates: float32 layers inside a 16-bit model made its next forward fail."""
    out, dense, _ = _save_packed(tmp_path / "packed", arch, "int4")
    model = ROUTES[route](out, dtype)
    packed_logits = _logits(model)
    model.dequantize()
    assert not any(isinstance(m, PackedLinear) for m in model.modules())
    assert {p.dtype for p in model.parameters()} == {dtype}
    logits = _logits(model)
    assert logits.dtype == dtype
    ulps = {torch.bfloat16: 8e-3, torch.float16: 1e-3}[dtype]  # two units in the last place at logits of ~0.7
    torch.testing.assert_close(logits, packed_logits, rtol=0, atol=ulps)
    torch.testing.assert_close(logits, _logits(copy.deepcopy(dense).to(dtype)), rtol=0, atol=ulps)
    model.save_pretrained(tmp_path / "plain")
    assert {t.dtype for t in load_file(tmp_path / "plain" / "model.safetensors").values()} == {dtype}


def test_explicit_dtype_is_honoured(tmp_path):
    out, _, layers = _save_packed(tmp_path / "packed", "llama", "int4")
    model = _load("transformers", out, torch.bfloat16)
    model.dequantize(dtype=torch.float32)
    assert model.get_submodule(next(iter(layers))).weight.dtype == torch.float32
