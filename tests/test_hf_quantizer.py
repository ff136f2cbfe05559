"""Plain ``AutoModelForCausalLM.from_pretrained`` on packed folders (``llmprune.hf_quantizer``): the same packed
modules and logits as ``llmprune.load``, in either import order; without llmprune, transformers names the method."""
from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import torch
from torch import nn

import llmprune
from llmprune import checkpoint
from llmprune.cli.main import main
from llmprune.errors import ModelNotFound
from llmprune.formats import FORMATS
from llmprune.model import resolve
from llmprune.packed_linear import PackedLinear
from tests.packed_fixtures import pack_model_, swap_in_
from tests.tiny_models import ARCHS, save_tiny, tiny_model

IDS = torch.tensor([[0, 5, 17, 42, 99, 7, 250, 3]])
SELF_CALIB = ["--calib", "self", "--nsamples", "4", "--seqlen", "32", "--quiet"]


def _logits(model):
    with torch.no_grad():
        return model(IDS).logits


def _save_packed(directory, arch: str, fmt: str, dtype: str = "float32"):
    """A packed checkpoint and the in-memory packed model it must load as."""
    model, _ = tiny_model(arch)
    layers = pack_model_(model, fmt, dtype)
    packed = copy.deepcopy(model)
    swap_in_(packed, layers)
    return checkpoint.save(model, directory, layers=layers), packed, layers


def _from_pretrained(path, **kwargs):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, **kwargs).eval()


CASES = [(fmt, arch) for fmt in FORMATS.names() if fmt != "dense" for arch in ("llama", "gpt2")]
CASES += [("int4", arch) for arch in ARCHS if arch not in ("llama", "gpt2")]


@pytest.mark.parametrize("fmt,arch", CASES)
def test_from_pretrained_loads_packed_modules(tmp_path, fmt, arch):
    out, packed, layers = _save_packed(tmp_path / "out", arch, fmt)
    model = _from_pretrained(out)
    assert all(isinstance(model.get_submodule(name), PackedLinear) for name in layers)
    assert model.get_submodule(next(iter(layers))).format == fmt
    assert torch.equal(_logits(model), _logits(packed))
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "llmprune" and set(config["layers"]) == set(layers)


def test_dense_folder_has_no_quantization_config(tmp_path):
    model, _ = tiny_model("llama")
    out = checkpoint.save(model, tmp_path / "dense")
    assert "quantization_config" not in json.loads((out / "config.json").read_text())


def test_from_pretrained_dtype_matches_llmprune_load(tmp_path):
    out, _, layers = _save_packed(tmp_path / "out", "opt", "sparse24_int4", dtype="float16")  # OPT: biased Linears
    for dtype in (torch.bfloat16, torch.float32):
        model = _from_pretrained(out, dtype=dtype)
        reference, _, _ = llmprune.load(out, dtype=dtype)
        layer = model.get_submodule(next(iter(layers)))
        assert layer.bias.dtype == dtype and layer.scales.dtype == torch.float16  # packed scales keep their dtype
        assert torch.equal(_logits(model), _logits(reference))


def test_moe_with_a_dense_expert(tmp_path, capsys):
    """Qwen2-MoE: transformers' loader fuses checkpoint keys named ``experts.N.gate_proj.weight``; a dense (ignored)
    expert next to packed ones must still load as the split experts llmprune saved."""
    src = save_tiny(tmp_path / "src", "qwen2_moe")
    out = tmp_path / "out"
    assert main(["compress", str(src), "-o", str(out), "--method", "wanda", "--sparsity", "0.5", "--quant", "w4g16",
                 "--format", "int4", "--ignore", r".*experts\.1\..*", *SELF_CALIB]) == 0
    model, reference = _from_pretrained(out), llmprune.load(out)[0]
    experts = model.model.layers[-1].mlp.experts
    assert isinstance(experts[0].down_proj, PackedLinear) and type(experts[1].down_proj) is nn.Linear
    assert torch.equal(_logits(model), _logits(reference))


def test_dequantize_and_save(tmp_path):
    out, packed, layers = _save_packed(tmp_path / "out", "llama", "int4")
    model = _from_pretrained(out)
    copy_dir = llmprune.save(model, tmp_path / "copy")  # llmprune's save writes the manifest llmprune.load checks
    assert torch.equal(_logits(llmprune.load(copy_dir)[0]), _logits(packed))
    with pytest.raises(ValueError, match="not serializable"):
        model.save_pretrained(tmp_path / "refused")
    model.dequantize()
    assert type(model.get_submodule(next(iter(layers)))) is nn.Linear
    assert not hasattr(model.config, "quantization_config")
    assert torch.allclose(_logits(model), _logits(packed), atol=1e-5)


_SCRIPT = """
import sys, torch
{imports}
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
print(type(model.get_submodule(sys.argv[2])).__name__)
"""


def _run(imports: str, out, layer: str):
    script = _SCRIPT.format(imports=imports)
    done = subprocess.run([sys.executable, "-c", script, str(out), layer], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip(), done.stderr


def test_import_order_and_without_llmprune(tmp_path):
    out, _, layers = _save_packed(tmp_path / "out", "llama", "int4")
    layer = next(iter(layers))
    assert _run("import transformers.modeling_utils\nimport llmprune", out, layer)[0] == "PackedLinear"
    kind, stderr = _run("", out, layer)  # no llmprune: transformers cannot use the packed layers, and says why
    assert kind == "Linear" and "Unknown quantization type, got llmprune" in stderr


def test_compress_refuses_a_packed_folder_or_model(tmp_path):
    out, _, _ = _save_packed(tmp_path / "out", "llama", "int4")
    with pytest.raises(ModelNotFound, match=r"stored packed \(int4\), already compressed"):
        resolve(out)  # a local folder: refused before loading (a Hub repo is refused by compress_ itself)
    recipe = llmprune.Recipe(method="magnitude", sparsity=llmprune.parse_sparsity("0.5"))
    with pytest.raises(llmprune.UserInputError, match="already packed"):
        llmprune.compress_(_from_pretrained(out), recipe)


def test_lm_eval_hf_model_loads_a_packed_folder(tmp_path):
    """lm-eval's ``hf`` model (``HFLM(pretrained=PATH)``) goes through from_pretrained: packed modules, and the
    same log-likelihood as lm-eval on the model ``llmprune.load`` returns."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from tests.tiny_models import tiny_tokenizer

    model, _ = tiny_model("llama")
    layers = pack_model_(model, "sparse24_int4")
    out = checkpoint.save(model, tmp_path / "out", layers=layers, tokenizer=tiny_tokenizer())
    request = [Instance(request_type="loglikelihood_rolling", doc={}, arguments=("Sparse matrices store",), idx=0)]
    by_path = HFLM(pretrained=str(out), device="cpu", batch_size=1)
    loaded, tokenizer, _ = llmprune.load(out)
    by_object = HFLM(pretrained=loaded, tokenizer=tokenizer, device="cpu", batch_size=1)
    assert isinstance(by_path.model.get_submodule(next(iter(layers))), PackedLinear)
    assert by_path.loglikelihood_rolling(request) == by_object.loglikelihood_rolling(request)
