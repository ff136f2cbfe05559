"""GQSA group sparsity: whole groups, exact counts, OBS compensation vs the oracle, W4S50 with GPTQ."""
import pytest
import torch

from llmprune.errors import UserInputError
from llmprune.masks import verify_pattern
from llmprune.prune import METHODS
from llmprune.prune import gqsa as _registers_gqsa  # noqa: F401  (until prune/__init__ imports it)
from llmprune.quant import QUANTIZERS
from llmprune.quant.bits_per_param import bits_per_param
from llmprune.recipe import Groups, QuantSpec, Unstructured
from tests.layer_cases import correlated_inputs, recon_error, stats_of
from tests.reference.gptq_unblocked import gptq_unblocked


def _gqsa(W, stats, sparsity, **kw):
    return METHODS.get("gqsa").fn(W, stats, sparsity, **kw)


def test_gqsa_drops_whole_groups_with_exact_sparsity():
    X = correlated_inputs(512, 64, seed=1)
    W = torch.randn(16, 64, generator=torch.Generator().manual_seed(101))
    pruned = _gqsa(W, stats_of(X), Groups(8, 0.5))
    blocks = pruned.mask.reshape(16, 8, 8)
    assert bool((blocks.all(-1) | (~blocks).all(-1)).all())
    assert bool(((~blocks).all(-1).sum(-1) == 4).all())  # 4 of 8 groups dropped in every row
    assert bool((pruned.weight[~pruned.mask] == 0).all())
    assert verify_pattern(pruned.mask, Groups(8, 0.5)) == 0.5


def test_gqsa_keeps_the_groups_with_the_largest_summed_wanda_score():
    X = correlated_inputs(512, 32, seed=2)
    W = torch.randn(4, 32, generator=torch.Generator().manual_seed(102))
    stats = stats_of(X)
    pruned = _gqsa(W, stats, Groups(8, 0.5))
    norms = X.norm(dim=0)  # ‖X_j‖₂ straight from the inputs
    for r in range(4):
        score = [float((W[r, 8 * g : 8 * g + 8].abs() * norms[8 * g : 8 * g + 8]).sum()) for g in range(4)]
        kept = sorted(sorted(range(4), key=lambda g: score[g])[2:])
        assert [g for g in range(4) if bool(pruned.mask[r, 8 * g])] == kept


def test_gqsa_compensation_matches_obs_oracle_with_the_fixed_mask():
    X = correlated_inputs(512, 32, seed=3).double()
    W = torch.randn(8, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(103))
    stats = stats_of(X)
    stats.hessian, stats.input_sq_norms = 2 * X.T @ X / 512, (X**2).mean(0)
    pruned = _gqsa(W, stats, Groups(4, 0.5), block=8)
    ref_w, _, _ = gptq_unblocked(W, stats.hessian, bits=None, group=32, mask=pruned.mask)
    assert torch.allclose(pruned.weight, ref_w, atol=1e-8)
    # compensation pays off against plain zeroing of the same groups
    assert recon_error(W, pruned.weight, X) < recon_error(W, W * pruned.mask, X)


def test_gqsa_w4s50_with_gptq_keeps_the_mask_and_costs_3_5_bits():
    X = correlated_inputs(512, 64, seed=4)
    W = torch.randn(16, 64, generator=torch.Generator().manual_seed(104))
    stats = stats_of(X)
    pruned = _gqsa(W, stats, Groups(16, 0.5))
    qw, info = QUANTIZERS.get("gptq").fn(pruned.weight, stats, QuantSpec(4, 16), mask=pruned.mask)
    deq = qw.dequantize()
    assert torch.equal(qw.mask, pruned.mask) and bool((deq[~pruned.mask] == 0).all())
    assert info["bits_per_param"] == pytest.approx(0.5 * (4 + 48 / 16)) == bits_per_param(qw)
    rtn, _ = QUANTIZERS.get("rtn").fn(pruned.weight, stats, QuantSpec(4, 16, method="rtn"), mask=pruned.mask)
    target = pruned.weight  # GPTQ compensates the quantization error of the weights it is given
    assert recon_error(target, deq, X) < 0.95 * recon_error(target, rtn.dequantize(), X)


def test_gqsa_bad_input_is_one_line():
    X = correlated_inputs(64, 32, seed=5)
    with pytest.raises(UserInputError, match="whole groups"):
        _gqsa(torch.randn(4, 32, generator=torch.Generator().manual_seed(105)), stats_of(X), Unstructured(0.5))
    with pytest.raises(UserInputError, match="not divisible by the group size 12"):
        _gqsa(torch.randn(4, 32, generator=torch.Generator().manual_seed(106)), stats_of(X), Groups(12, 0.5), name="q")


def test_gqsa_warns_before_calibration_when_whole_groups_fall_short_of_the_fraction():
    """A 64-wide layer holds one group of 64: int(1 x 0.5) = 0 groups dropped. The plan says so (naming the worst
    layer and what it reaches) before any work; groups of 16 reach the fraction exactly and say nothing."""
    import warnings

    from llmprune.compress import build_plan
    from llmprune.recipe import Recipe
    from tests.tiny_models import tiny_model

    model, _ = tiny_model("llama")
    with pytest.warns(UserWarning, match=r"fewer weights than --sparsity 0.5 asks.*0 of 1 groups of 64, sparsity "
                                         r"0.000\); groups of 32 reach it \(--sparsity 0.5@g32 --quant w4g32\)$"):
        build_plan(model, Recipe(method="gqsa", sparsity=Groups(64, 0.5), quant=QuantSpec(4, 64)))
    # the advice is computed: in=104 with groups of 8 (13 per row) falls short, and 16 would not divide 104
    from llmprune.plan import Plan

    wide = torch.nn.Linear(104, 8)
    plan = Plan(Recipe(method="gqsa", sparsity=Groups(8, 0.5)), {"0": wide})
    with pytest.warns(UserWarning, match=r"6 of 13 groups of 8, sparsity 0.462\); groups of 4 reach it "
                                         r"\(--sparsity 0.5@g4\)$"):
        plan.check_shapes({"0": wide}, lambda m: tuple(m.weight.shape))
    # the advice must fit every group-sparse layer (g12 would divide 48 but not 64) and be a group at all
    mixed = {"a": torch.nn.Linear(48, 8), "b": torch.nn.Linear(64, 8)}
    with pytest.warns(UserWarning, match=r"groups of 8 reach it \(--sparsity 0.5@g8\)$"):
        Plan(Recipe(method="gqsa", sparsity=Groups(16, 0.5)), mixed).check_shapes(mixed, lambda m: m.weight.shape)
    with pytest.warns(UserWarning, match=r"no smaller group dividing those layers reaches it"):
        Plan(Recipe(method="gqsa", sparsity=Groups(16, 0.3)), mixed).check_shapes(mixed, lambda m: m.weight.shape)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_plan(model, Recipe(method="gqsa", sparsity=Groups(16, 0.5)))
