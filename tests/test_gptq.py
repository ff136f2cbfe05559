"""GPTQ and joint SparseGPT+GPTQ against the unblocked float64 oracle; error against RTN and prune-then-RTN."""
import pytest
import torch

from llmprune.errors import UserInputError
from llmprune.masks import verify_pattern
from llmprune.prune import METHODS
from llmprune.quant import QUANTIZERS
from llmprune.quant.gptq import sparsegpt_quant
from llmprune.recipe import NM, Groups, QuantSpec, Unstructured
from llmprune.types import Stats
from tests.layer_cases import correlated_inputs, recon_error, stats_of
from tests.reference.gptq_unblocked import gptq_unblocked


def _case(rows=12, cols=32, seed=0):
    X = correlated_inputs(400, cols, seed=seed).double()
    W = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    return W, X, Stats(hessian=2 * X.T @ X / X.shape[0])


def _gptq(W, stats, spec, **kw):
    return QUANTIZERS.get("gptq").fn(W, stats, spec, **kw)


@pytest.mark.parametrize("bits, group, symmetric, block", [(3, 8, False, 16), (4, 0, False, 8), (3, 16, True, 32),
                                                           (2, 4, False, 128)])
def test_gptq_matches_unblocked_obs_float64(bits, group, symmetric, block):
    W, X, stats = _case()
    qw, info = _gptq(W, stats, QuantSpec(bits, group, symmetric), block=block)
    ref_w, ref_codes, _ = gptq_unblocked(W, stats.hessian, bits=bits, group=group or 32, symmetric=symmetric)
    assert torch.equal(qw.codes.double(), ref_codes)
    assert torch.allclose(qw.dequantize().double(), ref_w, atol=1e-6)
    assert qw.mask is None and info["damp_used"] == 0.01


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_shorter_last_group_matches_oracle(act_order):
    """40 inputs in groups of 16: groups of 16, 16 and 8 (as SmolLM2's 576 inputs in groups of 128)."""
    W, X, stats = _case(cols=40, seed=12)
    qw, _ = _gptq(W, stats, QuantSpec(3, 16), block=16, act_order=act_order)
    assert qw.scales.shape == (12, 3)
    if not act_order:
        ref_w, ref_codes, _ = gptq_unblocked(W, stats.hessian, bits=3, group=16)
        assert torch.equal(qw.codes.double(), ref_codes)
        assert torch.allclose(qw.dequantize().double(), ref_w, atol=1e-6)
        return
    diag = torch.diag(stats.hessian)
    perm = []
    for k in sorted(range(2), key=lambda k: -float(diag[16 * k : 16 * k + 16].sum())):
        perm += sorted(range(16 * k, 16 * k + 16), key=lambda c: -float(diag[c]))
    perm = torch.tensor(perm + sorted(range(32, 40), key=lambda c: -float(diag[c])))  # the short group stays last
    ref_w, ref_codes, _ = gptq_unblocked(W[:, perm], stats.hessian[perm][:, perm], bits=3, group=16)
    back = torch.argsort(perm)
    assert torch.equal(qw.codes.double(), ref_codes[:, back])


def test_gptq_with_fixed_mask_matches_oracle_and_keeps_zeros():
    W, X, stats = _case(seed=3)
    mask = torch.rand(12, 32, generator=torch.Generator().manual_seed(9)) > 0.5
    qw, _ = _gptq(W, stats, QuantSpec(4, 8), mask=mask, block=16)
    ref_w, ref_codes, _ = gptq_unblocked(W, stats.hessian, bits=4, group=8, mask=mask)
    assert torch.equal(qw.codes.double(), ref_codes) and torch.equal(qw.mask, mask)
    deq = qw.dequantize()
    assert bool((deq[~mask] == 0).all()) and torch.allclose(deq.double(), ref_w, atol=1e-6)


@pytest.mark.parametrize("group", [8, 0])
def test_gptq_act_order_matches_oracle_on_group_permuted_columns(group):
    W, X, stats = _case(seed=5)
    qw, info = _gptq(W, stats, QuantSpec(3, group), act_order=True, block=16)
    # the order written out by hand: groups by decreasing summed diag(H), columns inside by decreasing diag(H)
    diag = torch.diag(stats.hessian)
    g = group or 32
    perm = []
    for k in sorted(range(32 // g), key=lambda k: -float(diag[g * k : g * k + g].sum())):
        perm += sorted(range(g * k, g * k + g), key=lambda c: -float(diag[c]))
    perm = torch.tensor(perm)
    ref_w, ref_codes, _ = gptq_unblocked(W[:, perm], stats.hessian[perm][:, perm], bits=3, group=g)
    back = torch.argsort(perm)
    assert info["act_order"] and torch.equal(qw.codes.double(), ref_codes[:, back])
    assert torch.allclose(qw.dequantize().double(), ref_w[:, back], atol=1e-6)


def test_gptq_dequantize_equals_the_sweep_weight_in_float32():
    W, X, stats = _case(seed=6)
    W, stats = W.float(), Stats(hessian=stats.hessian.float())
    qw, _ = _gptq(W, stats, QuantSpec(4, 16))
    direct = (qw.codes.float() - qw.zeros.repeat_interleave(16, 1)) * qw.scales.repeat_interleave(16, 1)
    assert torch.equal(qw.dequantize(), direct)


@pytest.mark.parametrize("bits, group", [(3, 16), (4, 0), (4, 32), (2, 0)])
def test_gptq_beats_rtn_on_correlated_inputs(bits, group):
    X = correlated_inputs(1024, 64, seed=11)
    W = torch.randn(32, 64, generator=torch.Generator().manual_seed(101))
    stats = stats_of(X)
    g, _ = _gptq(W, stats, QuantSpec(bits, group))
    r, _ = QUANTIZERS.get("rtn").fn(W, stats, QuantSpec(bits, group, method="rtn"))
    assert recon_error(W, g.dequantize(), X) < 0.97 * recon_error(W, r.dequantize(), X)


@pytest.mark.parametrize("sparsity", [Unstructured(0.5), NM(2, 4)])
def test_sparsegpt_quant_matches_oracle_and_mask_is_exact(sparsity):
    W, X, stats = _case(rows=8, cols=32, seed=7)
    qw, info = sparsegpt_quant(W, stats, sparsity, QuantSpec(4, 8), block=16)
    nm = (sparsity.n, sparsity.m) if isinstance(sparsity, NM) else None
    fraction = None if nm else sparsity.fraction
    ref_w, ref_codes, ref_keep = gptq_unblocked(W, stats.hessian, bits=4, group=8, fraction=fraction, nm=nm,
                                                block=16)
    assert torch.equal(qw.mask, ref_keep) and torch.equal(qw.codes.double(), ref_codes)
    assert torch.allclose(qw.dequantize().double(), ref_w, atol=1e-6)
    verify_pattern(qw.mask, sparsity, compare="block", block=16)
    assert bool((qw.dequantize()[~qw.mask] == 0).all())


@pytest.mark.parametrize("sparsity", [Unstructured(0.5), NM(2, 4)])
def test_joint_sparse_quant_beats_prune_then_rtn(sparsity):
    X = correlated_inputs(1024, 64, seed=13)
    W = torch.randn(32, 64, generator=torch.Generator().manual_seed(102))
    stats = stats_of(X)
    joint, _ = sparsegpt_quant(W, stats, sparsity, QuantSpec(3, 16))
    pruned = METHODS.get("sparsegpt").fn(W, stats, sparsity)
    rtn, _ = QUANTIZERS.get("rtn").fn(pruned.weight, stats, QuantSpec(3, 16, method="rtn"), mask=pruned.mask)
    assert recon_error(W, joint.dequantize(), X) < recon_error(W, rtn.dequantize(), X)


def test_sparsegpt_pruning_matches_this_oracle_without_quantization():
    """The lead's SparseGPT, checked against the oracle here in pure-pruning mode (bits=None)."""
    W, X, stats = _case(rows=8, cols=32, seed=8)
    for sparsity, nm, fraction in [(NM(2, 4), (2, 4), None), (Unstructured(0.5), None, 0.5)]:
        pruned = METHODS.get("sparsegpt").fn(W.float(), Stats(hessian=stats.hessian.float()), sparsity, block=16)
        ref_w, _, keep = gptq_unblocked(W, stats.hessian, bits=None, group=32, nm=nm, fraction=fraction, block=16)
        assert torch.equal(pruned.mask, keep)
        assert torch.allclose(pruned.weight.double(), ref_w, atol=1e-4 * float(ref_w.abs().max()))


def test_sparsegpt_quant_refuses_group_sparsity_and_gptq_needs_hessian():
    W, X, stats = _case()
    with pytest.raises(UserInputError, match="gqsa"):
        sparsegpt_quant(W, stats, Groups(8, 0.5), QuantSpec(4, 8))
    with pytest.raises(UserInputError, match="Hessian"):
        _gptq(W, Stats(), QuantSpec(4, 8))
    with pytest.raises(UserInputError, match="larger than the input"):
        _gptq(W, stats, QuantSpec(4, 64), name="x")


def test_sparsegpt_quant_keeps_mask_blocks_when_the_group_does_not_divide_them():
    """Groups of 12 with mask blocks of 16: masks are still chosen per 16 columns (the lazy block grows to 48)."""
    W, X, stats = _case(rows=8, cols=48, seed=14)
    qw, _ = sparsegpt_quant(W, stats, Unstructured(0.5), QuantSpec(4, 12), block=16)
    ref_w, ref_codes, ref_keep = gptq_unblocked(W, stats.hessian, bits=4, group=12, fraction=0.5, block=16)
    verify_pattern(qw.mask, Unstructured(0.5), compare="block", block=16)
    assert torch.equal(qw.mask, ref_keep) and torch.equal(qw.codes.double(), ref_codes)
    assert torch.allclose(qw.dequantize().double(), ref_w, atol=1e-6)
