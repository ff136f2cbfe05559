"""PackedLinear inside tiny models keeps the outputs of the dequantized dense model; dispatch records its path."""
from __future__ import annotations

import copy

import pytest
import torch

from llmprune import dispatch
from llmprune.errors import UserInputError
from llmprune.formats import FORMATS
from llmprune.packed_linear import PackedLinear, packed_bytes
from tests.formats_fixtures import rtn
from tests.packed_fixtures import pack_model_, swap_in_
from tests.tiny_models import tiny_model

IDS = torch.tensor([[0, 5, 17, 42, 99, 7, 250, 3]])


@pytest.mark.parametrize("fmt", FORMATS.names())
@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt"])
def test_packed_model_matches_dequantized_dense_model(fmt, arch):
    model, _ = tiny_model(arch)
    layers = pack_model_(model, fmt)  # the model now holds the dequantized dense weights
    packed = copy.deepcopy(model)
    swap_in_(packed, layers)
    with torch.no_grad():
        want, got = model(IDS).logits, packed(IDS).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    paths = dispatch.kernel_paths(packed)
    assert paths and set(paths.values()) == {"reference"}
    assert not any(isinstance(m, torch.nn.Linear) and "layers" in n for n, m in packed.named_modules()
                   if "lm_head" not in n)


@pytest.mark.parametrize("fmt", [f for f in FORMATS.names() if f != "dense"])
def test_a_packed_model_moves_to_the_meta_device_keeping_its_params(fmt):
    """accelerate's offloading and ``init_empty_weights``-style code move modules to meta, where no value (spqr's
    code widths) can be read: the layer keeps the params it had, the dtype following a cast."""
    model, _ = tiny_model("llama")
    swap_in_(model, pack_model_(model, fmt))
    before = {n: dict(m.params) for n, m in model.named_modules() if isinstance(m, PackedLinear)}
    model.to("meta")
    assert {n: m.params for n, m in model.named_modules() if isinstance(m, PackedLinear)} == before
    model.to(torch.bfloat16)
    assert {m.params.get("dtype", "bfloat16") for m in model.modules() if isinstance(m, PackedLinear)} == {"bfloat16"}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_unpacking_gives_back_the_dense_model(dtype):
    """A PackedLinear that replaced GPT-2's Conv1D unpacks to a Conv1D with its ``[in, out]`` weight (also after a
    deepcopy), in the dtype the model was cast to: the plain transformers model with the same weights."""
    from transformers.pytorch_utils import Conv1D

    from llmprune.packed_linear import unpack_linears_

    model, _ = tiny_model("gpt2")
    layers = pack_model_(model, "int4")  # the model now holds the dequantized dense weights
    packed = copy.deepcopy(model)
    swap_in_(packed, layers)
    unpacked = unpack_linears_(copy.deepcopy(packed).to(dtype))
    ulp = 0 if dtype == torch.float32 else 2 ** -7  # bfloat16 scales (``.to`` casts them) round the weights once more
    for name in layers:
        layer, want = unpacked.get_submodule(name), model.get_submodule(name)
        assert type(layer) is Conv1D and layer.weight.shape == want.weight.shape and layer.weight.dtype == dtype
        torch.testing.assert_close(layer.weight, want.weight.to(dtype), rtol=ulp, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(unpacked(IDS).logits, model.to(dtype)(IDS).logits, rtol=0, atol=ulp)


def test_packed_linear_holds_no_dense_weight():
    weight = torch.randn(64, 128)
    module = PackedLinear.from_quantized(rtn(weight, 32), "int4")
    assert not hasattr(module, "weight")
    assert packed_bytes(module) == 64 * 64 + 64 * 4 * 2 + 64 * 4  # codes + fp16 scales + uint8 zeros
    x = torch.randn(2, 3, 128)
    torch.testing.assert_close(module(x), x @ rtn(weight, 32).dequantize().T, rtol=1e-3, atol=1e-3)


def test_dispatch_triton_mode_on_cpu_fails_with_one_line(monkeypatch):
    monkeypatch.setenv("LLMPRUNE_KERNEL", "triton")
    module = PackedLinear.from_quantized(rtn(torch.randn(8, 32), 16), "int4")
    with pytest.raises(UserInputError, match="LLMPRUNE_KERNEL=triton but input on cpu"):
        module(torch.randn(1, 32))


def test_dispatch_rejects_unknown_mode(monkeypatch):
    monkeypatch.setenv("LLMPRUNE_KERNEL", "fastest")
    module = PackedLinear.from_dense(torch.randn(8, 32))
    with pytest.raises(UserInputError, match="choose one of auto, reference, triton"):
        module(torch.randn(1, 32))


def test_dispatch_reference_mode_records_reason(monkeypatch):
    monkeypatch.setenv("LLMPRUNE_KERNEL", "reference")
    module = PackedLinear.from_dense(torch.randn(8, 32))
    module(torch.randn(1, 32))
    assert (module.kernel_path, module.kernel_reason) == ("reference", "LLMPRUNE_KERNEL=reference")


def test_from_dense_refuses_quantized_formats():
    with pytest.raises(UserInputError, match="q_proj: --format int4 stores quantized weights"):
        PackedLinear.from_dense(torch.randn(8, 32), "int4", name="q_proj")


def test_from_quantized_names_the_layer():
    with pytest.raises(UserInputError, match="^mlp.up_proj: --format sparse24_int4: the weight is not 2:4 sparse"):
        PackedLinear.from_quantized(rtn(torch.randn(8, 32), 16), "sparse24_int4", name="mlp.up_proj")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_dispatch_uses_triton_on_cuda():
    module = PackedLinear.from_quantized(rtn(torch.randn(64, 128), 32), "int4").cuda()
    x = torch.randn(1, 128, device="cuda", dtype=torch.float16)
    y = module(x)
    assert module.kernel_path == "triton", module.kernel_reason
    torch.testing.assert_close(y, x @ module.dequantize().half().T.cuda(), rtol=2e-2, atol=2e-2)


def test_pack_layer_for_save_and_errors():
    from llmprune.packed_linear import pack_layer

    qw = rtn(torch.randn(8, 32), 16)
    fmt, packed, params = pack_layer("mlp.up_proj", "int4", qw)
    assert fmt == "int4" and params == {"group": 16, "dtype": "float16"} and set(packed) == {"qweight", "scales", "zeros"}
    with pytest.raises(UserInputError, match="^mlp.up_proj: --format int4 stores quantized weights"):
        pack_layer("mlp.up_proj", "int4", torch.randn(8, 32))


def test_packed_modules_import_no_optional_dependencies():
    import subprocess
    import sys

    code = ("import sys, llmprune.formats, llmprune.packed_linear, llmprune.dispatch, llmprune.checkpoint, "
            "llmprune.export_ct; print(sorted(m for m in ('triton', 'compressed_tensors', 'lm_eval', 'datasets', "
            "'matplotlib') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_constant_marker_is_the_one_torch_compiler_sets():
    """dispatch marks its path choice constant for torch.compile without importing torch._dynamo at import time;
    this fails if torch changes what ``torch.compiler.assume_constant_result`` does."""
    def ours():
        return None

    def public():
        return None

    dispatch.constant_while_tracing(ours)
    torch.compiler.assume_constant_result(public)
    assert vars(ours) == vars(public) != {}


def test_dispatch_decides_once_per_mode_format_device_and_dtype(monkeypatch):
    calls = []
    decide = dispatch._decide
    monkeypatch.setattr(dispatch, "_paths", {})
    monkeypatch.setattr(dispatch, "_decide", lambda *a: calls.append(a[1:]) or decide(*a))
    module = PackedLinear.from_quantized(rtn(torch.randn(8, 32), 16), "int4")
    for x in (torch.randn(1, 32), torch.randn(3, 32), torch.randn(2, 32).double()):
        module(x)
    assert [(fmt.name, dev, dt) for fmt, dev, dt in calls] == [("int4", "cpu", torch.float32),
                                                                ("int4", "cpu", torch.float64)]
    monkeypatch.setenv("LLMPRUNE_KERNEL", "reference")
    module(torch.randn(1, 32))
    assert len(calls) == 3 and module.kernel_reason == "LLMPRUNE_KERNEL=reference"
