"""SmolLM2-135M: pack the Linears of the first and last decoder layers as sparse24_int4 (the rest stays dense, to
keep the test short), save, load -> identical logits on a short prompt (llmprune.load and transformers' from_pretrained); tied
embeddings stored once."""
from __future__ import annotations

import copy

import pytest
import torch

from llmprune import checkpoint
from llmprune.model import decoder_layers, linears, resolve, set_weight_
from llmprune.packed_linear import PackedLinear, pack_layer, set_module_
from tests.formats_fixtures import mask_24, rtn


@pytest.mark.slow
def test_smollm2_sparse24_int4_save_load_identical_logits(tmp_path):
    loaded = resolve("smollm2-135m")
    model, tokenizer = loaded.model.eval(), loaded.tokenizer
    layers = {}
    blocks, path = decoder_layers(model)
    for i in (0, len(blocks) - 1):
        for rel, lin in linears(blocks[i]).items():
            weight = lin.weight.detach().float()
            qw = rtn(weight, 32, symmetric=True, mask=mask_24(weight))
            set_weight_(lin, qw.dequantize())
            layers[f"{path}.{i}.{rel}"] = pack_layer(rel, "sparse24_int4", qw)
    packed = copy.deepcopy(model)
    for name, (fmt, tensors, _) in layers.items():
        set_module_(packed, name, PackedLinear.from_packed(tensors, fmt, model.get_submodule(name).in_features))
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    out = checkpoint.save(model, tmp_path / "smol", layers=layers, tokenizer=tokenizer)
    reloaded, tok2, manifest = checkpoint.load(out)
    with torch.no_grad():
        want, got, dense = packed(ids).logits, reloaded(ids).logits, model(ids).logits
    assert torch.equal(got, want)
    torch.testing.assert_close(got, dense, rtol=1e-3, atol=1e-3)  # fp16 scales vs the float32 dequantized model
    assert manifest["tied"] == {"lm_head.weight": "model.embed_tokens.weight"}
    assert tok2("The capital").input_ids == tokenizer("The capital").input_ids
    from transformers import AutoModelForCausalLM  # the same folder through transformers (llmprune.hf_quantizer)

    hf_model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert hf_model.lm_head.weight is hf_model.model.embed_tokens.weight  # still tied
    with torch.no_grad():
        assert torch.equal(hf_model(ids).logits, want)
