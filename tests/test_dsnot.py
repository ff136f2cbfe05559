"""DSnoT refinement: exact patterns, error never higher, and agreement with a float64 row-by-row brute-force oracle."""
from __future__ import annotations

import pytest
import torch

from llmprune.errors import UserInputError
from llmprune.masks import verify_pattern
from llmprune.prune import METHODS
from llmprune.recipe import NM, Groups, QuantSpec, Recipe, Unstructured
from llmprune.refine import REFINERS
from llmprune.refine.dsnot import check_recipe, dsnot, dsnot_applies, refine_mask
from llmprune.types import Pruned, Stats
from tests.layer_cases import correlated_inputs, stats_of
from tests.reference.dsnot_bruteforce import dsnot_bruteforce, expected_errors, swap_error_change


def _layer(rows=48, cols=64, seed=0, shift=0.4):
    """Correlated inputs with non-zero means (the case DSnoT targets) and a random weight."""
    g = torch.Generator().manual_seed(seed)
    X = correlated_inputs(2048, cols, seed=seed) + shift * torch.randn(cols, generator=g)
    return torch.randn(rows, cols, generator=g), stats_of(X)


def _errors(W, pruned, mean):
    return torch.tensor(expected_errors(W, pruned.weight, mean), dtype=torch.float64)


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("fraction", [0.5, 0.7])
def test_dsnot_keeps_exact_row_counts(method, fraction):
    W, stats = _layer()
    base = METHODS.get(method).fn(W, stats, Unstructured(fraction))
    refined = dsnot(W, base, stats, Unstructured(fraction))
    assert refined.info["dsnot_swaps"] > 0 and not torch.equal(refined.mask, base.mask)
    assert torch.equal(refined.mask.sum(1), base.mask.sum(1))
    assert bool((refined.weight[~refined.mask] == 0).all())


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("n,m", [(2, 4), (4, 8)])
def test_dsnot_keeps_nm_pattern(method, n, m):
    W, stats = _layer()
    base = METHODS.get(method).fn(W, stats, NM(n, m))
    refined = dsnot(W, base, stats, NM(n, m), monotone_nm=False)  # the reference's N:M rules
    assert refined.info["dsnot_swaps"] > 0
    verify_pattern(refined.mask, NM(n, m))
    changed_groups = (refined.mask != base.mask).reshape(W.shape[0], -1, m).any(-1)
    moved = (refined.mask & ~base.mask).reshape(W.shape[0], -1, m).sum(-1)
    assert bool((moved[changed_groups] >= 1).all())  # every change is a swap inside one group


@pytest.mark.parametrize("sparsity,options", [
    (Unstructured(0.5), {}), (Unstructured(0.7), {}), (Unstructured(0.6), {"sign_check_unstructured": True}),
    (NM(2, 4), {}), (NM(4, 8), {"sign_check_nm": False}),
])
@pytest.mark.parametrize("method", ["wanda", "magnitude", "sparsegpt"])
def test_dsnot_error_never_higher_per_row(sparsity, options, method):
    """Expected error |Σ_j (W − Ŵ)_ij E[x_j]| from a direct float64 evaluation, before vs after, in every row (the
    monotone rules, on by default)."""
    W, stats = _layer(seed=3)
    base = METHODS.get(method).fn(W, stats, sparsity)
    refined = dsnot(W, base, stats, sparsity, **options)
    before, after = _errors(W, base, stats.input_mean).abs(), _errors(W, refined, stats.input_mean).abs()
    assert bool((after <= before + 1e-9).all())
    assert float(after.sum()) < 0.8 * float(before.sum())


@pytest.mark.parametrize("sparsity, options, rules", [
    (Unstructured(0.6), {}, {"sign_check": False, "monotone": True}),  # ours: the monotone rule (README, DSnoT)
    (NM(2, 4), {}, {"sign_check": True, "monotone": True}),
    (NM(2, 4), {"monotone_nm": False}, {"sign_check": True, "monotone": False}),  # the reference's N:M rules
    (NM(4, 8), {"monotone_nm": False}, {"sign_check": True, "monotone": False}),
    (Unstructured(0.6), {"monotone_unstructured": False}, {"sign_check": False, "monotone": False}),
])
def test_dsnot_rules_per_pattern(sparsity, options, rules):
    """Each pattern's options reach the swap loop: the sign check and monotone rule of its own kind."""
    W, stats = _layer(seed=5)
    base = METHODS.get("wanda").fn(W, stats, sparsity)
    expected = refine_mask(W, base.weight, base.mask, stats, sparsity, **rules)
    other = refine_mask(W, base.weight, base.mask, stats, sparsity, **{**rules, "monotone": not rules["monotone"]})
    assert not torch.equal(expected.mask, other.mask)  # the case tells the two rules apart
    assert torch.equal(dsnot(W, base, stats, sparsity, **options).mask, expected.mask)


def test_dsnot_strictly_lower_on_suboptimal_mask():
    """One row, four inputs of mean 1 and variance 1: Wanda prunes the two weights of 1.0 (scores 1.41 < 1.70), leaving
    e = 2 although a kept weight of −1.2 could cancel it. DSnoT revives w0 and prunes w3: e = 2 − 1 − 1.2 = −0.2."""
    W = torch.tensor([[1.0, 1.0, 1.2, -1.2]])
    stats = Stats(input_sq_norms=torch.full((4,), 2.0), input_mean=torch.ones(4), input_var=torch.ones(4), tokens=10)
    base = METHODS.get("wanda").fn(W, stats, Unstructured(0.5))
    assert base.mask.tolist() == [[False, False, True, True]]
    refined = dsnot(W, base, stats, Unstructured(0.5))
    assert refined.mask.tolist() == [[True, False, True, False]]
    assert expected_errors(W, base.weight, stats.input_mean) == [2.0]
    assert expected_errors(W, refined.weight, stats.input_mean) == pytest.approx([-0.2], abs=1e-6)
    # With the sign check the same swap would flip the sign of e and is rejected (the reference's N:M behaviour).
    assert torch.equal(dsnot(W, base, stats, Unstructured(0.5), sign_check_unstructured=True).mask, base.mask)


def test_dsnot_threshold_applies_to_seqlen_scaled_error():
    """The reference compares seqlen·|e| (its sums over a window) with 0.1: here |e| = 2."""
    W = torch.tensor([[1.0, 1.0, 1.2, -1.2]])
    stats = Stats(input_sq_norms=torch.full((4,), 2.0), input_mean=torch.ones(4), input_var=torch.ones(4), tokens=10)
    base = METHODS.get("wanda").fn(W, stats, Unstructured(0.5))
    swaps = lambda **kw: dsnot(W, base, stats, Unstructured(0.5), **kw).info["dsnot_swaps"]  # noqa: E731
    assert swaps(update_threshold=1.9, calib_seqlen=1) == 1
    assert swaps(update_threshold=2.1, calib_seqlen=1) == 0
    assert swaps(update_threshold=2.1, calib_seqlen=2) == 1
    assert swaps(max_cycles=0) == 0


def _oracle_case(seed, sparsity, method="wanda"):
    W, stats = _layer(rows=12, cols=24, seed=seed)
    base = METHODS.get(method).fn(W, stats, sparsity)
    return W, stats, base


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("sparsity", [Unstructured(0.5), NM(2, 4)])
def test_dsnot_one_swap_error_change_matches_bruteforce(seed, sparsity):
    W, stats, base = _oracle_case(seed, sparsity)
    result = refine_mask(W, base.weight, base.mask, stats, sparsity, max_cycles=1, monotone=False, sign_check=False)
    oracle = dsnot_bruteforce(W, base.weight, base.mask, stats.input_mean, stats.input_var, stats.input_sq_norms,
                              nm=(sparsity.n, sparsity.m) if isinstance(sparsity, NM) else None, max_cycles=1,
                              monotone=False, sign_check=False)
    assert torch.equal(result.mask, oracle)
    swapped = 0
    for row in range(W.shape[0]):
        diff = (result.mask[row] != base.mask[row]).nonzero().flatten().tolist()
        if not diff:
            assert float(result.errors_after[row]) == float(result.errors_before[row])
            continue
        grow = next(j for j in diff if result.mask[row, j])
        prune = next(j for j in diff if not result.mask[row, j])
        direct = swap_error_change(W, base.weight, base.mask, base.mask, row, grow, prune, stats.input_mean)
        change = float(result.errors_after[row] - result.errors_before[row])
        assert change == pytest.approx(direct, rel=1e-5, abs=1e-7)
        swapped += 1
    assert swapped >= W.shape[0] // 2


@pytest.mark.parametrize("options", [{}, {"sign_check": True}, {"monotone": False}, {"monotone": False,
                                                                                     "pow_of_var_growing": 0.0}])
@pytest.mark.parametrize("sparsity,method", [(Unstructured(0.5), "wanda"), (Unstructured(0.7), "sparsegpt"),
                                             (NM(2, 4), "wanda"), (NM(4, 8), "magnitude")])
def test_dsnot_all_cycles_match_rowwise_bruteforce(options, sparsity, method):
    opts = {"sign_check": False, "monotone": True, **options}
    W, stats, base = _oracle_case(7, sparsity, method)
    result = refine_mask(W, base.weight, base.mask, stats, sparsity, **opts)
    pow_var = opts.pop("pow_of_var_growing", 1.0)
    oracle = dsnot_bruteforce(W, base.weight, base.mask, stats.input_mean, stats.input_var, stats.input_sq_norms,
                              nm=(sparsity.n, sparsity.m) if isinstance(sparsity, NM) else None, pow_var=pow_var,
                              **opts)
    assert torch.equal(result.mask, oracle)


def test_dsnot_revived_weights_take_dense_values_after_sparsegpt():
    W, stats = _layer()
    base = METHODS.get("sparsegpt").fn(W, stats, Unstructured(0.6))
    refined = dsnot(W, base, stats, Unstructured(0.6))
    revived = refined.mask & ~base.mask
    still = refined.mask & base.mask
    assert bool(revived.any())
    assert torch.equal(refined.weight[revived], W[revived])
    assert torch.equal(refined.weight[still], base.weight[still])


def test_refined_sparsegpt_at_a_fraction_whose_block_rounding_differs_compresses():
    """SparseGPT prunes int(block_numel·f) per 128-column block; at 0.7 on 144 inputs those counts add up to less
    than int(numel·f): the refined mask must be verified against the blocks' total, not the layer's."""
    import transformers as tf

    from llmprune import compress_
    from llmprune.data.calibration import CalibrationSet, windows_sha256

    rows = cols = 144
    expected = int(rows * 128 * 0.7) + int(rows * 16 * 0.7)
    assert expected != int(rows * cols * 0.7)
    torch.manual_seed(0)
    config = tf.LlamaConfig(vocab_size=320, hidden_size=cols, intermediate_size=320, num_hidden_layers=1,
                            num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    model = tf.LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 320, (4, 16), generator=torch.Generator().manual_seed(0))
    report = compress_(model, Recipe(method="sparsegpt", sparsity=Unstructured(0.7), refine="dsnot"),
                       CalibrationSet(ids, windows_sha256(ids)), progress=False)
    q = report.records["model.layers.0.self_attn.q_proj"]
    assert q["refine"] == "dsnot" and q["zeros"] == expected


def test_dsnot_registered_with_needs_and_mlp_rule():
    entry = REFINERS.get("dsnot")
    assert set(entry.needs) == {"input_mean", "input_var", "input_sq_norms"}
    assert entry.applies("model.layers.0.self_attn.q_proj", {})
    assert not entry.applies("model.layers.0.mlp.gate_proj", {})
    assert entry.applies("model.layers.0.mlp.gate_proj", {"dsnot_skip_mlp": False})
    assert not dsnot_applies("model.decoder.layers.3.fc1", True)
    assert not dsnot_applies("transformer.h.1.mlp.c_proj", True)
    assert dsnot_applies("transformer.h.1.attn.c_proj", True)
    with pytest.raises(UserInputError, match="did you mean 'dsnot'"):
        REFINERS.get("dsnto")


def test_dsnot_rejects_patterns_it_cannot_keep():
    W, stats = _layer(rows=4, cols=32)
    fake = Pruned(W, torch.ones_like(W, dtype=torch.bool))
    with pytest.raises(UserInputError, match="group sparsity"):
        dsnot(W, fake, stats, Groups(8, 0.5))
    with pytest.raises(UserInputError, match="group sparsity"):
        check_recipe(Recipe(method="gqsa", sparsity=Groups(16, 0.5), refine="dsnot"))
    with pytest.raises(UserInputError, match="jointly"):
        check_recipe(Recipe(method="sparsegpt", sparsity=NM(2, 4), quant=QuantSpec(4, 128), refine="dsnot"))
    with pytest.raises(UserInputError, match="--sparsity"):
        check_recipe(Recipe(method="wanda", quant=QuantSpec(4, 128), refine="dsnot"))
    check_recipe(Recipe(method="wanda", sparsity=NM(2, 4), quant=QuantSpec(4, 128, method="rtn"), refine="dsnot"))
    for message in ("group sparsity", "jointly", "--sparsity"):
        assert "\n" not in message
