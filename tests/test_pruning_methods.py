"""Wanda, magnitude and SparseGPT against independent computations on hand-built layers."""
import pytest
import torch

from llmprune.prune import METHODS
from llmprune.recipe import NM, Unstructured
from tests.layer_cases import correlated_inputs, recon_error, stats_of
from tests.reference.obs_unblocked import obs_unblocked


def _python_topk_keep(scores, prune_count):
    """Keep-mask by plain Python sorting per row (lowest scores pruned, ties by index)."""
    keep = torch.ones_like(scores, dtype=torch.bool)
    for r in range(scores.shape[0]):
        order = sorted(range(scores.shape[1]), key=lambda c: (float(scores[r, c]), c))
        keep[r, order[:prune_count]] = False
    return keep


def test_wanda_scores_are_weight_times_input_norm():
    X = correlated_inputs(256, 32, seed=1)
    W = torch.randn(8, 32)
    direct = W.abs() * X.norm(dim=0).reshape(1, -1)  # |W_ij| · ‖X_j‖₂ from the raw inputs
    pruned = METHODS.get("wanda").fn(W, stats_of(X), Unstructured(0.5))
    assert torch.equal(pruned.mask, _python_topk_keep(direct, 16))
    assert torch.equal(pruned.weight, W * pruned.mask)


def test_wanda_nm_compares_within_groups_of_m():
    X = correlated_inputs(256, 32, seed=2)
    W = torch.randn(8, 32)
    direct = (W.abs() * X.norm(dim=0)).reshape(8 * 8, 4)
    expected = _python_topk_keep(direct, 2).reshape(8, 32)
    assert torch.equal(METHODS.get("wanda").fn(W, stats_of(X), NM(2, 4)).mask, expected)


def test_magnitude_unstructured_compares_over_the_layer():
    W = torch.randn(8, 32)
    pruned = METHODS.get("magnitude").fn(W, None, Unstructured(0.5))
    assert int((~pruned.mask).sum()) == 128
    assert W.abs()[~pruned.mask].max() <= W.abs()[pruned.mask].min()


@pytest.mark.parametrize("sparsity, kwargs", [(Unstructured(0.5), {"fraction": 0.5}),
                                              (Unstructured(0.6), {"fraction": 0.6}),
                                              (NM(2, 4), {"nm": (2, 4)}), (NM(4, 8), {"nm": (4, 8)})])
@pytest.mark.parametrize("block", [8, 128])
def test_sparsegpt_matches_unblocked_obs_float64(sparsity, kwargs, block):
    X = correlated_inputs(512, 32, seed=3)
    W = torch.randn(12, 32, dtype=torch.float64)
    stats = stats_of(X)
    stats.hessian = 2 * X.double().T @ X.double() / X.shape[0]
    result = METHODS.get("sparsegpt").fn(W.clone(), stats, sparsity, damp=0.01, block=block)
    W_ref, keep_ref = obs_unblocked(W, stats.hessian, damp=0.01, block=block, **kwargs)
    assert torch.equal(result.mask, keep_ref)
    torch.testing.assert_close(result.weight.double(), W_ref, rtol=1e-4, atol=1e-5)


def test_sparsegpt_handles_dead_inputs():
    X = correlated_inputs(256, 16, seed=4)
    X[:, 3] = 0
    W = torch.randn(4, 16)
    result = METHODS.get("sparsegpt").fn(W, stats_of(X), NM(2, 4))
    assert (result.weight[:, 3] == 0).all()


@pytest.mark.parametrize("sparsity", [Unstructured(0.5), NM(2, 4)])
def test_sparsegpt_beats_wanda_and_magnitude_on_reconstruction(sparsity):
    X = correlated_inputs(2048, 64, seed=5)
    W = torch.randn(32, 64)
    stats = stats_of(X)
    errors = {m: recon_error(W, METHODS.get(m).fn(W, stats, sparsity).weight, X)
              for m in ("magnitude", "wanda", "sparsegpt")}
    assert errors["sparsegpt"] < errors["wanda"] < errors["magnitude"], errors
