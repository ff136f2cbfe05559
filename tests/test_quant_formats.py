"""The quantizers' outputs pack into their storage formats and unpack to exactly ``QuantizedWeight.dequantize()``."""
import pytest
import torch

from llmprune.formats import FORMATS
from llmprune.prune import METHODS
from llmprune.prune import gqsa as _registers_gqsa  # noqa: F401  (until prune/__init__ imports it)
from llmprune.quant import QUANTIZERS
from llmprune.quant.gptq import sparsegpt_quant
from llmprune.recipe import NM, Groups, QuantSpec
from tests.layer_cases import correlated_inputs, stats_of


@pytest.fixture(scope="module")
def layer():
    X = correlated_inputs(512, 64, seed=21)
    W = torch.randn(32, 64, generator=torch.Generator().manual_seed(22))
    return W, stats_of(X)


def _roundtrip(fmt: str, qw) -> None:
    record = FORMATS.get(fmt).fn
    # float32 storage keeps the scales exactly, so the packed weight is bit-identical to the quantizer's
    packed = record.pack(qw, dtype="float32") if fmt != "spqr" else record.pack(qw)
    assert torch.equal(record.unpack(packed, qw.shape[1]), qw.dequantize())


@pytest.mark.parametrize("quantizer", ["rtn", "gptq"])
def test_int4_holds_rtn_and_gptq_codes(quantizer, layer):
    W, stats = layer
    qw, _ = QUANTIZERS.get(quantizer).fn(W, stats, QuantSpec(4, 16, method=quantizer))
    _roundtrip("int4", qw)


def test_sparse24_int4_holds_joint_sparsegpt_gptq(layer):
    W, stats = layer
    qw, _ = sparsegpt_quant(W, stats, NM(2, 4), QuantSpec(4, 32))
    _roundtrip("sparse24_int4", qw)


def test_group_sparse_int4_holds_gqsa_w4s50(layer):
    W, stats = layer
    pruned = METHODS.get("gqsa").fn(W, stats, Groups(16, 0.5))
    qw, _ = QUANTIZERS.get("gptq").fn(pruned.weight, stats, QuantSpec(4, 16), mask=pruned.mask)
    _roundtrip("group_sparse_int4", qw)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_spqr_format_holds_spqr_in_its_16_bit_storage(layer, dtype):
    """A bfloat16 model stores its statistics and outliers in bfloat16: SpQR rounds them to that type while choosing
    the codes, so the checkpoint holds exactly the compressed weight (not float16 values re-rounded)."""
    W, stats = layer
    storage = getattr(torch, dtype)
    qw, _ = QUANTIZERS.get("spqr").fn(W, stats, QuantSpec(3, 16, method="spqr"), scale_dtype=storage)
    assert qw.outliers is not None and qw.outliers[2].dtype == storage
    record = FORMATS.get("spqr").fn
    assert torch.equal(record.unpack(record.pack(qw, dtype=dtype), qw.shape[1]), qw.dequantize())
