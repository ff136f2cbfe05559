"""Uniform quantizer primitives and RTN: round trip, code range, group boundaries, bad specs."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from llmprune.errors import UserInputError
from llmprune.quant import QUANTIZERS
from llmprune.quant.uniform import check_quant_shape, find_params, quantize_codes
from llmprune.recipe import QuantSpec, parse_quant


@settings(max_examples=40, deadline=None)
@given(bits=st.integers(2, 8), group=st.sampled_from([0, 4, 8, 16]), symmetric=st.booleans(),
       seed=st.integers(0, 10_000))
def test_rtn_roundtrip_within_half_a_step_and_codes_in_range(bits, group, symmetric, seed):
    W = torch.randn(6, 32, generator=torch.Generator().manual_seed(seed)) * 0.1
    qw, _ = QUANTIZERS.get("rtn").fn(W, None, QuantSpec(bits, group, symmetric, method="rtn"))
    g = group or 32
    assert qw.group == g and qw.scales.shape == (6, 32 // g) and qw.codes.dtype == torch.uint8
    assert int(qw.codes.max()) <= 2**bits - 1
    step = qw.scales.repeat_interleave(g, dim=1)
    # every weight inside its group's range is reproduced within half a step (symmetric grids clip the very top
    # value of [-amax, amax] by at most half a step too, since the grid has 2**bits - 1 steps over 2·amax)
    err = (qw.dequantize() - W).abs()
    assert bool((err <= step / 2 + 1e-7).all())


def test_asymmetric_grid_is_gptq_minmax_through_zero():
    w = torch.tensor([[0.5, 1.0, 2.0, 3.0], [-4.0, -1.0, 2.0, 0.0]])
    scale, zero = find_params(w, 2, False)
    # row 0: range clamped to [0, 3] -> scale 1, zero 0; row 1: [-4, 2] -> scale 2, zero round(2) = 2
    assert torch.allclose(scale, torch.tensor([1.0, 2.0])) and torch.equal(zero, torch.tensor([0.0, 2.0]))
    codes = quantize_codes(w, scale.unsqueeze(1), zero.unsqueeze(1), 2)
    assert torch.equal(codes, torch.tensor([[0.0, 1.0, 2.0, 3.0], [0.0, 2.0, 3.0, 2.0]]))


def test_symmetric_zero_is_half_range_and_zero_row_gets_unit_range():
    w = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0]])
    scale, zero = find_params(w, 4, True)
    assert torch.equal(zero, torch.tensor([8.0, 8.0]))
    assert torch.allclose(scale, torch.tensor([8.0 / 15, 2.0 / 15]))


def test_rtn_groups_see_only_their_own_columns():
    W = torch.randn(4, 64, generator=torch.Generator().manual_seed(101))
    spec = QuantSpec(3, 16, method="rtn")
    base, _ = QUANTIZERS.get("rtn").fn(W, None, spec)
    W2 = W.clone()
    W2[:, 16:32] *= 50  # only group 1 changes
    other, _ = QUANTIZERS.get("rtn").fn(W2, None, spec)
    same = [0, 2, 3]
    assert torch.equal(base.scales[:, same], other.scales[:, same])
    for k in same:
        assert torch.equal(base.codes[:, 16 * k : 16 * k + 16], other.codes[:, 16 * k : 16 * k + 16])
    assert not torch.equal(base.scales[:, 1], other.scales[:, 1])
    # the group's own grid is the min-max of exactly its columns
    lo, hi = W2[:, 16:32].min(1).values.clamp(max=0), W2[:, 16:32].max(1).values.clamp(min=0)
    assert torch.allclose(other.scales[:, 1], (hi - lo) / 7)


def test_rtn_mask_keeps_pruned_weights_exactly_zero():
    W = torch.randn(8, 32, generator=torch.Generator().manual_seed(102))
    mask = torch.rand(8, 32, generator=torch.Generator().manual_seed(103)) > 0.5
    qw, _ = QUANTIZERS.get("rtn").fn(W, None, QuantSpec(4, 8, method="rtn"), mask=mask)
    deq = qw.dequantize()
    assert bool((deq[~mask] == 0).all())
    cols = torch.arange(32) // 8
    assert torch.equal(qw.codes[~mask].float(), qw.zeros[:, cols][~mask])  # pruned codes hold the zero point


@pytest.mark.parametrize("text, needle", [("w9", "between 2 and 8"), ("w1", "between 2 and 8"),
                                          ("w4g0", "at least 1"), ("int4", "wBITS")])
def test_parse_quant_rejects_bad_specs_in_one_line(text, needle):
    with pytest.raises(UserInputError) as exc:
        parse_quant(text)
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_check_quant_shape_names_the_layer():
    with pytest.raises(UserInputError, match=r"^model.layers.0.q: group size 128 .* larger than the input") as exc:
        check_quant_shape(64, parse_quant("w4g128"), "model.layers.0.q")
    assert "\n" not in str(exc.value)
    check_quant_shape(64, parse_quant("w4g48"), "q")  # a shorter last group (GPTQ's reference does the same)
    with pytest.raises(UserInputError, match="not divisible by the SpQR group size 48"):
        check_quant_shape(64, parse_quant("w3g48", method="spqr"), "q")
    check_quant_shape(64, parse_quant("w4g16"), "q")
    check_quant_shape(64, parse_quant("w4"), "q")
    with pytest.raises(UserInputError, match="group size 16 .* larger"):
        check_quant_shape(8, parse_quant("w3", method="spqr"), "q")  # SpQR's default group is 16
    with pytest.raises(UserInputError, match="SpQR needs groups of at least 2 weights"):
        check_quant_shape(64, parse_quant("w3g1", method="spqr"), "q")  # leave-one-out needs a second weight


def test_rtn_last_group_may_be_shorter():
    W = torch.randn(3, 40, generator=torch.Generator().manual_seed(105))
    qw, info = QUANTIZERS.get("rtn").fn(W, None, QuantSpec(3, 16, method="rtn"))
    assert qw.scales.shape == (3, 3)  # 16 + 16 + 8 columns
    tail = W[:, 32:]
    lo, hi = tail.min(1).values.clamp(max=0), tail.max(1).values.clamp(min=0)
    assert torch.allclose(qw.scales[:, 2], (hi - lo) / 7)  # the short group's own min-max
    assert bool(((qw.dequantize() - W).abs() <= qw.scales.repeat_interleave(16, 1)[:, :40] / 2 + 1e-7).all())
    assert info["bits_per_param"] == pytest.approx(3 + 32 * 3 / 40)


def test_check_quant_shape_checks_spqr_second_level_groups_when_given_the_output_dimension():
    spec = parse_quant("w3g16", method="spqr")
    check_quant_shape(64, spec, "q", out_features=48)
    with pytest.raises(UserInputError, match="stat_group=16 must divide the output dimension 40"):
        check_quant_shape(64, spec, "q", out_features=40)
