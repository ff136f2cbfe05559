"""Wanda: pruning by weights and activations."""
from torch import Tensor

from ..masks import keep_mask
from ..recipe import Sparsity
from ..types import Pruned, Stats
from . import METHODS


@METHODS.register("wanda", needs=frozenset({"input_sq_norms"}), compare="row")
def wanda(weight: Tensor, stats: Stats, sparsity: Sparsity) -> Pruned:
    """Wanda (Sun et al. 2023, arXiv:2306.11695, Eq. 1): score S_ij = |W_ij| · ‖X_j‖₂, compared within each output
    row (unstructured) or within each group of M inputs (N:M). ‖X_j‖₂ is sqrt(tokens · input_sq_norms_j); the constant
    factor does not change any comparison, so we use sqrt(input_sq_norms) as the reference code does."""
    keep = keep_mask(weight.abs() * stats.input_sq_norms.sqrt().reshape(1, -1), sparsity, compare="row")
    return Pruned(weight * keep, keep)
