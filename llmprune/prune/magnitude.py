"""Magnitude pruning: the data-free baseline."""
from torch import Tensor

from ..masks import keep_mask
from ..recipe import Sparsity
from ..types import Pruned, Stats
from . import METHODS


@METHODS.register("magnitude", needs=frozenset(), compare="layer")
def magnitude(weight: Tensor, stats: Stats, sparsity: Sparsity) -> Pruned:
    """Prune the smallest |W|, compared over the whole layer for unstructured sparsity (the Wanda paper's magnitude
    baseline, Sun et al. 2023 Sec. 4) and within each group for N:M / group patterns."""
    keep = keep_mask(weight.abs(), sparsity, compare="layer")
    return Pruned(weight * keep, keep)
