"""The library's own quantizers (llmprune/quant) feed every format exactly: pack -> unpack == qw.dequantize()."""
from __future__ import annotations

import pytest
import torch

from llmprune.formats import get_format
from llmprune.quant import QUANTIZERS
from llmprune.recipe import NM, QuantSpec, Unstructured
from llmprune.types import Stats
from tests.formats_fixtures import mask_24, mask_groups

OUT, IN = 32, 64


def _stats(seed: int = 0) -> Stats:
    x = torch.randn(256, IN, generator=torch.Generator().manual_seed(seed))
    return Stats(input_sq_norms=(x**2).mean(0), hessian=2 * x.T @ x / 256, tokens=256)


def _weight(seed: int = 1) -> torch.Tensor:
    return torch.randn(OUT, IN, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("fmt,method,mask_fn,sym", [
    ("int4", "gptq", None, False), ("int4", "rtn", None, True), ("int4", "rtn", lambda w: w.abs() > 0.5, False),
    ("sparse24_int4", "gptq", mask_24, True), ("sparse24_int4", "rtn", mask_24, False),
    ("group_sparse_int4", "rtn", lambda w: mask_groups(w, 16), False),
    ("group_sparse_int4", "gptq", lambda w: mask_groups(w, 16), True),
])
def test_uniform_quantizers_pack_exactly(fmt, method, mask_fn, sym):
    weight = _weight()
    mask = mask_fn(weight) if mask_fn else None
    qw, _ = QUANTIZERS.get(method).fn(weight, _stats(), QuantSpec(4, 16, sym), mask=mask)
    packed = get_format(fmt).pack(qw, dtype="float32")
    assert torch.equal(get_format(fmt).unpack(packed, IN), qw.dequantize())


def test_sparsegpt_joint_24_quant_packs_exactly():
    from llmprune.quant.gptq import sparsegpt_quant

    qw, _ = sparsegpt_quant(_weight(), _stats(), NM(2, 4), QuantSpec(4, 16, False))
    packed = get_format("sparse24_int4").pack(qw, dtype="float32")
    assert torch.equal(get_format("sparse24_int4").unpack(packed, IN), qw.dequantize())
    qw, _ = sparsegpt_quant(_weight(), _stats(), Unstructured(0.5), QuantSpec(4, 16, False))
    assert torch.equal(get_format("int4").unpack(get_format("int4").pack(qw, dtype="float32")), qw.dequantize())


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_spqr_quantizer_packs_exactly(dtype):
    qw, _ = QUANTIZERS.get("spqr").fn(_weight(), _stats(), QuantSpec(3, 16, False, method="spqr"))
    assert qw.outliers is not None and qw.outliers[2].numel() > 0
    packed = get_format("spqr").pack(qw, dtype=dtype)  # the second level is float16 already: lossless either way
    assert torch.equal(get_format("spqr").unpack(packed, IN), qw.dequantize())
