"""Property tests: pack -> unpack is exact against ``QuantizedWeight.dequantize`` (the oracle in llmprune/types.py),
and ``matmul_ref`` equals ``x @ W.T`` of that oracle weight within float rounding, for every format."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

from llmprune.errors import UserInputError
from llmprune.formats import FORMATS, get_format
from tests.formats_fixtures import FLOATS, random_qw, random_spqr_qw

SETTINGS = settings(max_examples=25, deadline=None)
TOL = {torch.float32: 1e-5, torch.float16: 2e-2, torch.bfloat16: 1e-1}


def _spec_matches(fmt, packed, out_f, in_f):
    specs = fmt.tensor_specs(out_f, in_f, **fmt.params(packed, in_f))
    assert set(specs) == set(packed)
    for name, spec in specs.items():
        assert tuple(packed[name].shape) == spec.shape and packed[name].dtype == spec.dtype, name


def _check_matmul(fmt, packed, weight, in_f, act):
    x = torch.randn(3, in_f, generator=torch.Generator().manual_seed(1)).to(act)
    want = (x.double() @ weight.double().T)
    got = fmt.matmul_ref(x, packed).double()
    scale = want.abs().max().item() + 1e-6
    assert (got - want).abs().max().item() / scale < TOL[act]


def _roundtrip(name, qw, dtype, act=torch.float32):
    fmt = get_format(name)
    out_f, in_f = qw.shape
    packed = fmt.pack(qw, dtype=str(dtype).removeprefix("torch."))
    _spec_matches(fmt, packed, out_f, in_f)
    assert torch.equal(fmt.unpack(packed, in_f), qw.dequantize())
    _check_matmul(fmt, packed, qw.dequantize(), in_f, act)


dims8 = st.integers(1, 6).map(lambda k: 8 * k)


@SETTINGS
@given(out_f=st.integers(1, 9), blocks=st.integers(1, 4), group=st.sampled_from([2, 4, 8, 16]),
       sym=st.booleans(), pattern=st.sampled_from(["dense", "unstructured"]), dtype=st.sampled_from(FLOATS),
       act=st.sampled_from(FLOATS), seed=st.integers(0, 99))
def test_int4_roundtrip_exact(out_f, blocks, group, sym, pattern, dtype, act, seed):
    qw = random_qw(out_f, blocks * group, group, symmetric=sym, pattern=pattern, seed=seed, dtype=dtype)
    _roundtrip("int4", qw, dtype, act)


@SETTINGS
@given(out_f=st.integers(1, 9), in_f=dims8, sym=st.booleans(), dtype=st.sampled_from(FLOATS),
       per_row=st.booleans(), seed=st.integers(0, 99))
def test_sparse24_int4_roundtrip_exact(out_f, in_f, sym, dtype, per_row, seed):
    group = in_f if per_row else 8
    qw = random_qw(out_f, in_f, group, symmetric=sym, pattern="24", seed=seed, dtype=dtype)
    _roundtrip("sparse24_int4", qw, dtype)


@SETTINGS
@given(out_f=st.integers(1, 9), groups=st.integers(1, 6), group=st.sampled_from([2, 4, 16]), sym=st.booleans(),
       dtype=st.sampled_from(FLOATS), seed=st.integers(0, 99))
def test_group_sparse_int4_roundtrip_exact(out_f, groups, group, sym, dtype, seed):
    qw = random_qw(out_f, groups * group, group, symmetric=sym, pattern="groups", seed=seed, dtype=dtype)
    _roundtrip("group_sparse_int4", qw, dtype)


@SETTINGS
@given(blocks=st.integers(1, 3), groups=st.integers(1, 5), group=st.sampled_from([1, 4, 16]),
       stat_group=st.sampled_from([1, 3, 16]), bits=st.integers(2, 8), frac=st.sampled_from([0.0, 0.05, 0.5]),
       dtype=st.sampled_from(FLOATS), seed=st.integers(0, 99))
def test_spqr_roundtrip_exact(blocks, groups, group, stat_group, bits, frac, dtype, seed):
    qw = random_spqr_qw(blocks * stat_group, groups * group, group, stat_group, bits=bits, outlier_frac=frac, seed=seed, dtype=dtype)
    _roundtrip("spqr", qw, dtype)


@SETTINGS
@given(out_f=st.integers(1, 9), in_f=dims8, dtype=st.sampled_from(FLOATS), seed=st.integers(0, 99))
def test_sparse24_roundtrip_exact(out_f, in_f, dtype, seed):
    qw = random_qw(out_f, in_f, in_f, pattern="24", seed=seed)
    weight = qw.dequantize().to(dtype)
    fmt = get_format("sparse24")
    packed = fmt.pack(weight)
    _spec_matches(fmt, packed, out_f, in_f)
    assert torch.equal(fmt.unpack(packed), weight)
    assert packed["values"].shape == (out_f, in_f // 2)
    _check_matmul(fmt, packed, weight.float(), in_f, dtype)


@SETTINGS
@given(out_f=st.integers(1, 9), in_f=st.integers(1, 40), dtype=st.sampled_from(FLOATS), seed=st.integers(0, 99))
def test_dense_roundtrip_exact(out_f, in_f, dtype, seed):
    weight = torch.randn(out_f, in_f, generator=torch.Generator().manual_seed(seed)).to(dtype)
    fmt = get_format("dense")
    packed = fmt.pack(weight)
    _spec_matches(fmt, packed, out_f, in_f)
    assert torch.equal(fmt.unpack(packed), weight)


def test_formats_registry_lists_every_format():
    assert FORMATS.names() == ["dense", "group_sparse_int4", "int4", "sparse24", "sparse24_int4", "spqr"]


@pytest.mark.parametrize("name,qw,fragment", [
    ("int4", lambda: random_qw(2, 24, 16), "group size 16 does not divide in_features 24"),
    ("sparse24_int4", lambda: random_qw(2, 12, 4, pattern="24"), "not a multiple of 8"),
    ("sparse24_int4", lambda: random_qw(2, 16, 8, pattern="dense", seed=3), "not 2:4 sparse"),
    ("int4", lambda: random_qw(2, 16, 8, bits=8), "at most 4-bit"),
    ("spqr", lambda: random_qw(2, 16, 8), "bilevel statistics"),
])
def test_formats_reject_unfit_layers_with_one_line(name, qw, fragment):
    with pytest.raises(UserInputError) as info:
        get_format(name).pack(qw())
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_sparse24_rejects_dense_weight():
    with pytest.raises(UserInputError, match="--sparsity 2:4"):
        get_format("sparse24").pack(torch.ones(2, 8))


@pytest.mark.parametrize("fmt,shape,quant,sparsity,fragment", [
    ("int4", (8, 24), "w4g16", None, "layers.0.q_proj: --format int4: group size 16 does not divide in_features 24"),
    ("int4", (8, 32), None, None, "layers.0.q_proj: --format int4 stores quantized weights; add --quant"),
    ("int4", (8, 32), "w8g16", None, "codes of at most 4 bits"),
    ("sparse24", (8, 12), None, "2:4", "not a multiple of 8"),
    ("group_sparse_int4", (8, 32), "w4g16", "0.5@g8", "needs group sparsity with the quantization group"),
    ("spqr", (8, 24), "w3g16", None, "group size 16 does not divide"),
    ("spqr", (12, 32), "w3g16", None, "stat_group 16 must divide out_features"),
    ("spqr", (16, 32), "gptq:w3g16", None, "which only the spqr quantizer makes; add --quantizer spqr"),
    ("int4", (16, 32), "spqr:w4g16", None, "--format int4 cannot hold SpQR's unrounded zero points"),
])
def test_check_layer_refuses_before_calibration(fmt, shape, quant, sparsity, fragment):
    """``quant`` as ``[quantizer:]wB[gG]``; the quantizer defaults to the one the format stores (spqr's own)."""
    from llmprune.formats import check_layer
    from llmprune.recipe import parse_quant, parse_sparsity

    method, _, text = quant.rpartition(":") if quant else ("", "", "")
    q = parse_quant(text, method or ("spqr" if fmt == "spqr" else "gptq")) if quant else None
    s = parse_sparsity(sparsity) if sparsity else None
    with pytest.raises(UserInputError) as info:
        check_layer(fmt, "layers.0.q_proj", *shape, quant=q, sparsity=s)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_check_layer_accepts_fitting_layers():
    from llmprune.formats import check_layer
    from llmprune.recipe import parse_quant, parse_sparsity

    check_layer("int4", "a", 8, 32, quant=parse_quant("w4g16"))
    check_layer("int4", "a", 8, 30, quant=parse_quant("w4"))
    check_layer("group_sparse_int4", "a", 8, 32, quant=parse_quant("w4g16"), sparsity=parse_sparsity("0.5@g16"))
    check_layer("spqr", "a", 16, 32, quant=parse_quant("w3g16", method="spqr"))
    check_layer("dense", "a", 8, 7)
