"""SpQR: unblocked oracle, leave-one-out sensitivity by brute force, outliers, bilevel statistics, bits/param."""
import math

import pytest
import torch

from llmprune.errors import UserInputError
from llmprune.quant import QUANTIZERS
from llmprune.quant.spqr import leave_one_out_gain
from llmprune.recipe import QuantSpec, parse_quant
from llmprune.types import Stats
from tests.layer_cases import correlated_inputs, recon_error, stats_of
from tests.reference.gptq_unblocked import _loo_gain, spqr_unblocked


def _case(rows=16, cols=32, seed=0, dtype=torch.float64):
    X = correlated_inputs(400, cols, seed=seed).to(dtype)
    W = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed + 1), dtype=dtype)
    W[3, 5] = 6.0  # a planted outlier
    return W, X, Stats(hessian=2 * X.T @ X / X.shape[0])


def _spqr(W, stats, spec=QuantSpec(3, 8, method="spqr"), **kw):
    return QUANTIZERS.get("spqr").fn(W, stats, spec, **kw)


def test_spqr_matches_unblocked_oracle_float64():
    W, X, stats = _case()
    qw, info = _spqr(W, stats, act_order=False, block=16)
    ref_w, ref_out = spqr_unblocked(W, stats.hessian, bits=3, group=8, rel_threshold=0.2)
    row_ptr, cols, vals = qw.outliers
    mask = torch.zeros_like(ref_out)
    mask[torch.repeat_interleave(torch.arange(16), row_ptr.diff()), cols.long()] = True
    assert torch.equal(mask, ref_out) and 0 < int(ref_out.sum()) < 40
    assert torch.allclose(qw.dequantize().double(), ref_w, atol=1e-5)
    assert info["outlier_fraction"] == int(ref_out.sum()) / W.numel()


def test_nearly_constant_group_keeps_finite_statistics_and_matches_the_oracle():
    """A group whose range is ~1e-6 of its magnitude: without the scale floor its zero point (-min/scale ~ 1e6)
    overflows the float16 second-level statistics and the layer becomes NaN (SmolLM2's o_proj at 2 bits)."""
    W, X, stats = _case()
    W[3, :8] = 0.7 + 1e-6 * torch.randn(8, generator=torch.Generator().manual_seed(1))
    spec = QuantSpec(2, 8, method="spqr")
    qw, _ = _spqr(W, stats, spec, act_order=False, block=16)
    assert all(bool(torch.isfinite(v.float()).all()) for v in qw.extra.values() if torch.is_tensor(v))
    deq = qw.dequantize()
    assert bool(torch.isfinite(deq).all())
    ref_w, _ = spqr_unblocked(W, stats.hessian, bits=2, group=8, rel_threshold=0.2)
    assert torch.allclose(deq.double(), ref_w, atol=1e-5)


def test_act_order_ranks_a_dead_input_by_its_raw_zero_diagonal(monkeypatch):
    """SpQR's reference computes the permutation before dead inputs get H_jj = 1, so a dead column ranks last; with
    every live diagonal below 1, ranking after the patch would put it first."""
    import llmprune.quant.spqr as spqr_module

    W, X, _ = _case()
    X = X / X.abs().max()  # live diagonals well below 1
    X[:, 5] = 0.0
    stats = Stats(hessian=2 * X.T @ X / X.shape[0])
    assert float(stats.hessian.diag().max()) < 1.0
    seen, original = [], spqr_module.act_order_perm
    monkeypatch.setattr(spqr_module, "act_order_perm", lambda diag, group: seen.append(diag.clone()) or
                        original(diag, group))
    _spqr(W, stats, act_order=True, block=16)
    assert float(seen[0][5]) == 0.0 and int(original(seen[0], 32)[-1]) == 5


def test_leave_one_out_gain_matches_brute_force_refits():
    gw = torch.randn(5, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(101))
    gw[2, 3] = 9.0
    d = torch.rand(8, dtype=torch.float64, generator=torch.Generator().manual_seed(102)) + 0.5
    gain = leave_one_out_gain(gw, d, 3)
    assert torch.allclose(gain, _loo_gain(gw, d, 3), atol=1e-9)
    assert int(gain[2].argmax()) == 3  # leaving the planted outlier out helps its group most


def test_outlier_count_responds_to_the_threshold():
    W, X, stats = _case(seed=2, dtype=torch.float32)
    counts = [_spqr(W, stats, outlier_threshold=t)[1]["outlier_fraction"] for t in (0.05, 0.2, 1.0, math.inf)]
    assert counts[0] > counts[1] > counts[2] and counts[3] == 0
    qw, _ = _spqr(W, stats, outlier_threshold=math.inf)
    assert qw.outliers is None


def test_outliers_are_restored_exactly_in_16_bits():
    W, X, stats = _case(seed=4, dtype=torch.float32)
    qw, _ = _spqr(W, stats)
    row_ptr, cols, vals = qw.outliers
    rows = torch.repeat_interleave(torch.arange(W.shape[0]), row_ptr.diff())
    assert vals.dtype == torch.float16 and cols.dtype == torch.int32
    assert torch.equal(qw.dequantize()[rows, cols.long()], vals.float())
    assert bool((cols[1:] > cols[:-1])[(rows[1:] == rows[:-1])].all())  # ascending within each row
    assert (3, 5) in set(zip(rows.tolist(), cols.tolist()))  # the planted outlier is one of them


def test_first_level_statistics_are_the_bilevel_reconstruction():
    W, X, stats = _case(rows=32, seed=5, dtype=torch.float32)
    qw, _ = _spqr(W, stats, stat_group=16)
    e = qw.extra
    assert e["stat_bits"] == 3 and e["stat_group"] == 16 and e["scale_scale"].shape == (2, 4)
    assert int(e["scale_codes"].max()) <= 7 and int(e["zero_codes"].max()) <= 7
    r = torch.arange(32) // 16
    scales = (e["scale_codes"].float() - e["scale_zero"].float()[r]) * e["scale_scale"].float()[r]
    zeros = (e["zero_codes"].float() - e["zero_zero"].float()[r]) * e["zero_scale"].float()[r]
    assert torch.equal(qw.scales, scales) and torch.equal(qw.zeros, zeros)


def test_spqr_packs_and_unpacks_exactly_with_the_spqr_format():
    from llmprune.formats import FORMATS

    W, X, stats = _case(rows=32, seed=6, dtype=torch.float32)
    qw, _ = _spqr(W, stats)
    fmt = FORMATS.get("spqr").fn
    assert torch.equal(fmt.unpack(fmt.pack(qw), W.shape[1]), qw.dequantize())


def test_bits_per_param_by_hand():
    W, X, stats = _case(rows=32, cols=64, seed=7, dtype=torch.float32)
    qw, info = _spqr(W, stats, QuantSpec(3, 16, method="spqr"))
    nnz = qw.outliers[2].numel()
    # 3 bits + (3 + 3)/16 first-level + 2·(16 + 16)/(16·16) second-level + 32 per outlier
    assert info["bits_per_param"] == pytest.approx(3 + 6 / 16 + 64 / 256 + 32 * nnz / (32 * 64))
    assert 3.625 + 0.32 * 100 * nnz / 2048 == pytest.approx(info["bits_per_param"])


def test_spqr_beats_gptq_at_the_same_code_width_and_damping():
    """At equal damping (the reference's 1.0 of the mean diagonal over-damps these synthetic, 400:1-scaled inputs)."""
    X = correlated_inputs(1024, 64, seed=8)
    W = torch.randn(32, 64, generator=torch.Generator().manual_seed(103))
    stats = stats_of(X)
    s, _ = _spqr(W, stats, QuantSpec(3, 16, method="spqr"), spqr_damp=0.01)
    g, _ = QUANTIZERS.get("gptq").fn(W, stats, QuantSpec(3, 16), damp=0.01)
    assert recon_error(W, s.dequantize(), X) < 0.7 * recon_error(W, g.dequantize(), X)


@pytest.mark.parametrize("kw, needle", [({"stat_bits": 0}, "stat_bits"), ({"stat_group": 5}, "stat_group"),
                                        ({"outlier_threshold": -1}, "outlier_threshold"),
                                        ({"spqr_damp": 0}, "spqr_damp")])
def test_spqr_impossible_settings_are_one_line_errors(kw, needle):
    W, X, stats = _case(dtype=torch.float32)
    with pytest.raises(UserInputError, match=needle) as exc:
        _spqr(W, stats, **kw)
    assert "\n" not in str(exc.value)


def test_spqr_impossible_specs():
    W, X, stats = _case(dtype=torch.float32)
    with pytest.raises(UserInputError, match="asymmetric"):
        _spqr(W, stats, parse_quant("w3g8s", method="spqr"))
    with pytest.raises(UserInputError, match="larger than the input"):
        _spqr(W, stats, parse_quant("w3g64", method="spqr"))
    with pytest.raises(UserInputError, match="at least 2"):
        _spqr(W, stats, parse_quant("w3g1", method="spqr"))
    with pytest.raises(UserInputError, match="stat_group"):
        _spqr(W, stats, QuantSpec(3, 8, method="spqr", options=(("stat_group", 7),)))
    with pytest.raises(UserInputError, match="sparsity"):
        _spqr(W, stats, mask=torch.ones_like(W, dtype=torch.bool))
