"""SparseGPT: one-shot pruning with OBS error compensation."""
from torch import Tensor

from .. import obs
from ..masks import per_layer
from ..recipe import NM, Groups, Sparsity
from ..types import Pruned, Stats
from ..errors import UserInputError
from . import METHODS


@METHODS.register("sparsegpt", needs=frozenset({"hessian"}), compare="block")
def sparsegpt(weight: Tensor, stats: Stats, sparsity: Sparsity, *, damp: float = 0.01, block: int = 128,
              name: str = "") -> Pruned:
    """SparseGPT (Frantar & Alistarh 2023, arXiv:2301.00774, Alg. 1) as its reference code does it.

    H = 2XXᵀ/T (float32), dead inputs zeroed, damping ``damp`` × mean(diag H), upper Cholesky factor of H⁻¹, blocks of
    ``block`` columns with lazy updates. Unstructured masks are chosen once per block across all rows by
    w²/[H⁻¹]_jj² (adaptive mask selection); N:M masks per M-group on the already-updated weights.

    Deviation: the reference prunes ``score <= threshold`` with the threshold the int(block_numel · fraction)-th
    smallest score (0-based): one weight more per block than the fraction, more with ties; we prune exactly
    int(block_numel · fraction) per block, ties broken by index, so the achieved sparsity is exact.
    """
    if isinstance(sparsity, Groups):
        raise UserInputError("sparsegpt does not choose group masks; use --method gqsa for group sparsity")
    W = weight.clone().float()
    H = stats.hessian.clone().float()
    obs.mask_dead_inputs_(H, W)
    Hinv, damp_used = obs.damped_inverse_cholesky(H, damp, name=name)
    if isinstance(sparsity, NM):
        result = obs.sweep(W, Hinv, block=block, nm=(sparsity.n, sparsity.m))
    else:
        def block_mask(W1: Tensor, d: Tensor) -> Tensor:
            return per_layer(W1**2 / d.reshape(1, -1) ** 2, sparsity.fraction)

        result = obs.sweep(W, Hinv, block=block, block_mask=block_mask)
    info = {"damp_used": damp_used, "obs_loss": float(result.loss.sum())}
    return Pruned(result.weight, result.mask, info)


