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
from llmprune.model.kv_cache import cache_keyword
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
    with pytest.raises(llmprune.UserInputError, match=r"use llmprune.save\(model, out_dir\)"):
        model.save_pretrained(tmp_path / "refused")
    assert not (tmp_path / "refused").exists() or not any((tmp_path / "refused").iterdir())
    model.dequantize()
    assert type(model.get_submodule(next(iter(layers)))) is nn.Linear
    assert not hasattr(model.config, "quantization_config")
    assert torch.allclose(_logits(model), _logits(packed), atol=1e-5)
    ours = llmprune.load(out)[0]  # llmprune's loader marks its model the same way
    with pytest.raises(llmprune.UserInputError, match=r"use llmprune.save"):
        ours.save_pretrained(tmp_path / "refused_too")
    assert torch.equal(_logits(ours.dequantize()), _logits(model))


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
    # importing the quantizer module itself first (it brings transformers in, whose import hook then fires)
    assert _run("import llmprune.hf_quantizer", out, layer)[0] == "PackedLinear"


def test_compress_refuses_a_packed_folder_or_model(tmp_path):
    out, _, _ = _save_packed(tmp_path / "out", "llama", "int4")
    with pytest.raises(ModelNotFound, match=r"stored packed \(int4\), already compressed"):
        resolve(out)  # a local folder: refused before loading (a Hub repo is refused by compress_ itself)
    (out / "llmprune.json").unlink()  # without its manifest, config.json still says what it is
    with pytest.raises(ModelNotFound, match=r"stored packed \(int4\)"):
        resolve(out)
    recipe = llmprune.Recipe(method="magnitude", sparsity=llmprune.parse_sparsity("0.5"))
    with pytest.raises(llmprune.UserInputError, match="already packed"):
        llmprune.compress_(_from_pretrained(out), recipe)


def _edit_layers(out, edit) -> None:
    path = out / "config.json"
    config = json.loads(path.read_text())
    edit(config["quantization_config"]["layers"])
    path.write_text(json.dumps(config))


EDITS = {
    "layer dropped": (lambda layers: layers.pop("model.layers.0.mlp.down_proj"), "does not list it"),
    "bias claimed": (lambda layers: layers["model.layers.0.mlp.down_proj"].update(bias=True), "says bias=True"),
    "other format": (lambda layers: layers["model.layers.0.mlp.down_proj"].update(format="sparse24_int4"),
                     "needs qvalues"),
    "unknown format": (lambda layers: layers["model.layers.0.mlp.down_proj"].update(format="int5"), "unknown format"),
    "other group": (lambda layers: layers["model.layers.0.mlp.down_proj"]["params"].update(group=32), "needs scales"),
    "fields missing": (lambda layers: layers["model.layers.0.mlp.down_proj"].pop("params"), "needs format, "),
    "emptied": (lambda layers: layers.clear(), "'layers' must map"),
}


@pytest.mark.parametrize("case", list(EDITS))
def test_hand_edited_quantization_config_fails_in_one_line(tmp_path, case):
    """Both loaders refuse a config.json whose layer records were edited (transformers would otherwise load random
    or uninitialized tensors for the affected layers)."""
    from llmprune.errors import CorruptCheckpoint

    out, _, _ = _save_packed(tmp_path / "out", "llama", "int4")
    edit, message = EDITS[case]
    _edit_layers(out, edit)
    with pytest.raises(CorruptCheckpoint, match=message) as caught:
        _from_pretrained(out)
    assert len(str(caught.value).splitlines()) == 1
    with pytest.raises(CorruptCheckpoint, match="differ from llmprune.json"):
        llmprune.load(out)


def test_saved_config_dtype_follows_the_tensors(tmp_path):
    out, _, _ = _save_packed(tmp_path / "out", "opt", "int4")
    model = _from_pretrained(out).to(torch.float16)
    copy_dir = llmprune.save(model, tmp_path / "copy")
    assert json.loads((copy_dir / "config.json").read_text())["dtype"] == "float16"
    assert _from_pretrained(copy_dir, dtype="auto").dtype == llmprune.load(copy_dir)[0].dtype == torch.float16
    layer = _from_pretrained(copy_dir).model.decoder.layers[0].self_attn.q_proj
    assert isinstance(layer, PackedLinear) and not layer.bias.requires_grad


def test_dequantized_mixtral_saves_a_plain_folder(tmp_path, capsys):
    """Mixtral's checkpoint keys are converted on load; dequantize() re-fuses the experts so save_pretrained writes
    transformers' own layout and the folder loads back equal."""
    src = save_tiny(tmp_path / "src", "mixtral")
    out = tmp_path / "out"
    assert main(["compress", str(src), "-o", str(out), "--method", "wanda", "--sparsity", "0.5", "--quant", "w4g16",
                 "--format", "int4", *SELF_CALIB]) == 0
    model = _from_pretrained(out)
    packed_logits = _logits(model)
    model.dequantize()
    model.save_pretrained(tmp_path / "plain")
    assert "quantization_config" not in json.loads((tmp_path / "plain" / "config.json").read_text())
    assert torch.allclose(_logits(_from_pretrained(tmp_path / "plain")), packed_logits, atol=1e-5)


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


@pytest.mark.parametrize("loader", ["llmprune", "transformers"])
def test_unpacked_model_saves_a_plain_folder(tmp_path, loader):
    """After unpack_linears_ no packed layer is left, so the dense save must not keep config.json's promise of
    packed layers (from_pretrained would then look for packed tensors)."""
    from llmprune.packed_linear import unpack_linears_

    out, packed, layers = _save_packed(tmp_path / "out", "opt", "sparse24_int4")
    model = llmprune.load(out)[0] if loader == "llmprune" else _from_pretrained(out)
    unpack_linears_(model)
    plain = llmprune.save(model, tmp_path / "plain")
    assert "quantization_config" not in json.loads((plain / "config.json").read_text())
    reloaded = _from_pretrained(plain)
    assert type(reloaded.get_submodule(next(iter(layers)))) is nn.Linear
    assert torch.allclose(_logits(reloaded), _logits(packed), atol=1e-5)


def test_generate_may_compile_a_packed_model(tmp_path):
    """With a static cache, transformers' generate compiles the forward unless the quantizer says it cannot; packed
    modules run under torch.compile, so a packed model compiles like the dense one (eager backend: no toolchain)."""
    from transformers import CompileConfig, StaticCache

    out, _, _ = _save_packed(tmp_path / "out", "llama", "int4")
    model = _from_pretrained(out)
    plain = model.generate(IDS[:, :5], max_new_tokens=4, do_sample=False)
    config = CompileConfig(backend="eager")
    config._compile_all_devices = True  # transformers compiles on CUDA only unless told otherwise
    compiled = model.generate(IDS[:, :5], max_new_tokens=4, do_sample=False, compile_config=config,
                              **{cache_keyword(model): StaticCache(config=model.config, max_cache_len=64)})
    assert getattr(model, "_compiled_call", None) is not None and torch.equal(plain, compiled)
