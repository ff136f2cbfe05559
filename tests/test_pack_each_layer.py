"""compress_(pack=FORMAT) (what `llmprune compress --format` runs) packs each decoder layer as soon as it is done,
so finished layers hold packed bytes, not dense weights. The checkpoint must be the one packing at the end writes,
tensor for tensor."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import llmprune
from llmprune import Recipe, compress_, parse_quant, parse_sparsity
from llmprune.errors import UserInputError
from llmprune.model.layers import decoder_layers, get_weight
from llmprune.packed_linear import PackedLinear, packed_bytes
from tests.tiny_models import VOCAB, tiny_calibration, tiny_model

CASES = {
    "llama sparsegpt+gptq -> sparse24_int4": ("llama", dict(method="sparsegpt", sparsity="2:4", quant="w4g16"),
                                              "sparse24_int4"),
    "qwen2 (biases) rtn -> int4": ("qwen2", dict(quant="w4g16", quantizer="rtn"), "int4"),
    "gpt2 (Conv1D) sparsegpt -> sparse24": ("gpt2", dict(method="sparsegpt", sparsity="2:4"), "sparse24"),
    "llama gqsa -> group_sparse_int4": ("llama", dict(method="gqsa", sparsity="0.5@g16", quant="w4g16"),
                                        "group_sparse_int4"),
    "llama spqr -> spqr": ("llama", dict(quant="w3g16", quantizer="spqr"), "spqr"),
    "mixtral (experts) magnitude + lm_head -> sparse24": ("mixtral", dict(method="magnitude", sparsity="2:4",
                                                                          include_lm_head=True), "sparse24"),
}


def _recipe(spec: dict) -> Recipe:
    spec = dict(spec)
    quant = spec.pop("quant", None)
    quantizer = spec.pop("quantizer", "gptq")
    sparsity = spec.pop("sparsity", None)
    return Recipe(sparsity=None if sparsity is None else parse_sparsity(sparsity),
                  quant=None if quant is None else parse_quant(quant, method=quantizer), **spec)


def _tensors(folder) -> dict[str, torch.Tensor]:
    tensors = {}
    for shard in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(shard))
    return tensors


@pytest.mark.parametrize("case", list(CASES))
def test_packing_each_layer_writes_the_checkpoint_packing_at_the_end_writes(case, tmp_path):
    arch, spec, fmt = CASES[case]
    recipe = _recipe(spec)
    at_end, _ = tiny_model(arch)
    report_end = compress_(at_end, recipe, tiny_calibration(), progress=False)
    each, _ = tiny_model(arch)
    report_each = compress_(each, recipe, tiny_calibration(), progress=False, pack=fmt)

    _, path = decoder_layers(each)  # still found: a block of PackedLinears is a decoder block
    in_layers = [name for name in report_each.records if name.startswith(f"{path}.")]
    assert in_layers and all(isinstance(each.get_submodule(name), PackedLinear) for name in in_layers)
    def timeless(records):  # the per-layer records without their wall times
        return {name: {k: v for k, v in r.items() if k != "seconds"} for name, r in records.items()}

    # the same records, GPTQ/SparseGPT/SpQR losses included: every layer saw the same inputs (a layer packed before
    # its outputs were computed would feed the next one 16-bit-rounded weights' outputs)
    assert timeless(report_each.records) == timeless(report_end.records)

    a = llmprune.save(at_end, tmp_path / "end", report=report_end, format=fmt)
    b = llmprune.save(each, tmp_path / "each", report=report_each, format=fmt)
    want, got = _tensors(a), _tensors(b)
    assert want.keys() == got.keys()
    for key in want:
        assert want[key].dtype == got[key].dtype and torch.equal(want[key], got[key]), key
    layer_records = [json.loads((d / "llmprune.json").read_text())["layers"] for d in (a, b)]
    assert layer_records[0] == layer_records[1]

    ids = torch.randint(0, VOCAB, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(each(ids).logits, at_end(ids).logits, atol=2e-3, rtol=1e-3)


def test_a_packed_layer_holds_a_fraction_of_its_dense_bytes():
    model, _ = tiny_model("llama")
    dense = sum(get_weight(m).numel() * 4 for n, m in model.named_modules() if n.endswith("_proj"))
    compress_(model, _recipe(dict(method="sparsegpt", sparsity="2:4", quant="w4g16")), tiny_calibration(), progress=False,
              pack="sparse24_int4")
    assert not any(n.endswith("_proj") and isinstance(m, torch.nn.Linear) for n, m in model.named_modules())
    assert packed_bytes(model) < dense / 6  # 0.56 bytes a weight (2:4 nibbles, metadata, g16 statistics) vs 4


def test_a_format_the_recipe_cannot_fill_is_refused_before_any_change():
    model, _ = tiny_model("llama")
    before = {n: p.clone() for n, p in model.named_parameters()}
    with pytest.raises(UserInputError, match="int4"):
        compress_(model, _recipe(dict(method="wanda", sparsity="2:4")), tiny_calibration(), progress=False, pack="int4")
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_saving_layers_packed_in_one_format_as_another_is_refused(tmp_path):
    model, _ = tiny_model("llama")
    report = compress_(model, _recipe(dict(method="sparsegpt", sparsity="2:4", quant="w4g16")), tiny_calibration(),
                       progress=False, pack="int4")
    with pytest.raises(UserInputError, match="packed as int4"):
        llmprune.save(model, tmp_path / "x", report=report, format="sparse24_int4")
    assert not (tmp_path / "x").exists()
