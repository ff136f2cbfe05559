"""Quantizing a model pruned by an earlier run keeps its zeros (llmprune/earlier_zeros.py): GPTQ's error feedback
would otherwise fill them in, and the report counts them."""
from __future__ import annotations

import warnings

import pytest
import torch

from llmprune import compress_
from llmprune.earlier_zeros import EARLIER_PRUNING, earlier_mask
from llmprune.model.layers import get_weight, linears
from llmprune.recipe import Recipe, parse_quant, parse_sparsity
from tests.tiny_models import tiny_calibration, tiny_model


def _weights(model) -> dict[str, torch.Tensor]:
    """The decoder blocks' Linears (lm_head is not compressed by default)."""
    return {name: get_weight(module).detach().clone() for name, module in linears(model).items() if ".layers." in name}


def _pruned_llama():
    model, _ = tiny_model("llama")
    compress_(model, Recipe(method="wanda", sparsity=parse_sparsity("2:4")), tiny_calibration(), progress=False)
    return model


@pytest.mark.parametrize("quantizer", ["gptq", "rtn"])
def test_quantizing_a_pruned_model_keeps_its_zeros(quantizer):
    model = _pruned_llama()
    before = _weights(model)
    report = compress_(model, Recipe(quant=parse_quant("w4g32", method=quantizer)), tiny_calibration(), progress=False)
    after = _weights(model)
    for name, weight in before.items():
        revived = int(((weight == 0) & (after[name] != 0)).sum())
        assert revived == 0, f"{name}: {revived} pruned weights filled in by {quantizer}"
        assert report.records[name]["earlier_zeros"] == pytest.approx(float((weight == 0).float().mean()))
    assert report.achieved_sparsity() >= 0.5


def test_gptq_on_a_pruned_model_would_fill_the_zeros_without_the_mask():
    """The defect this guards against is real: GPTQ given no mask moves pruned weights off zero."""
    from llmprune.quant.gptq import gptq
    from tests.layer_cases import correlated_inputs, stats_of

    torch.manual_seed(0)
    weight = torch.randn(16, 64)
    weight[:, ::2] = 0
    qw, _ = gptq(weight, stats_of(correlated_inputs(256, 64)), parse_quant("w4g32"))
    assert int(((weight == 0) & (qw.dequantize() != 0)).sum()) > 100


def test_a_dense_model_gets_no_earlier_mask():
    model, _ = tiny_model("llama")
    report = compress_(model, Recipe(quant=parse_quant("w4g32")), tiny_calibration(), progress=False)
    assert not any("earlier_zeros" in record for record in report.records.values())
    assert report.achieved_sparsity() == 0.0


def test_spqr_fills_them_and_says_so():
    model = _pruned_llama()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compress_(model, Recipe(quant=parse_quant("w3g16", method="spqr")), tiny_calibration(), progress=False)
    said = [str(w.message) for w in caught if "quantizes dense weights, filling them in" in str(w.message)]
    assert len(said) == 1 and said[0].startswith(f"{len(_weights(model))} Linear layers"), said


def test_threshold():
    weight = torch.ones(10, 100)
    weight[:, : round(100 * EARLIER_PRUNING) - 1] = 0
    assert earlier_mask(weight) is None
    weight[:, : round(100 * EARLIER_PRUNING)] = 0
    assert torch.equal(earlier_mask(weight), weight != 0)


@pytest.mark.parametrize("recipe", [Recipe(method="magnitude", sparsity=parse_sparsity("0.3")),
                                    Recipe(method="wanda", sparsity=parse_sparsity("0.3"), quant=parse_quant("w4g32"))])
def test_pruning_again_to_a_lower_target_reports_the_zeros_the_weights_have(recipe):
    """Pruned 2:4 earlier, pruned again to 30%: the weights stay ~50% zeros (GPTQ moves a few of the earlier zeros its
    new mask keeps), and the report counts them (it said 0.30). Both masks prune zero-score weights first, so every
    weight pruned now was zero before."""
    model = _pruned_llama()
    before = _weights(model)
    report = compress_(model, recipe, tiny_calibration(), progress=False)
    after = _weights(model)
    still = sum(int(((before[n] == 0) & (after[n] == 0)).sum()) for n in after)
    fraction = still / sum(w.numel() for w in after.values())
    assert fraction > 0.45
    assert report.achieved_sparsity() == pytest.approx(fraction, abs=1e-9)
