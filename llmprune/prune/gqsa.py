"""GQSA's group sparsity: whole groups of g consecutive input weights kept or dropped per row, OBS-compensated."""
from __future__ import annotations

import torch
from torch import Tensor

from .. import obs
from ..errors import UserInputError
from ..masks import groups
from ..recipe import Groups, Sparsity
from ..types import Pruned, Stats
from . import METHODS


def group_scores(weight: Tensor, input_sq_norms: Tensor) -> Tensor:
    """Wanda scores |W_ij|·‖X_j‖ (Sun et al. 2023); ``masks.groups`` sums them over each group of a row."""
    return weight.abs() * input_sq_norms.to(weight.dtype).sqrt().reshape(1, -1)


@METHODS.register("gqsa", needs=frozenset({"input_sq_norms", "hessian"}), compare="row")
def gqsa(weight: Tensor, stats: Stats, sparsity: Sparsity, *, damp: float = 0.01, block: int = 128,
         name: str = "") -> Pruned:
    """GQSA-style structured group sparsity (Zeng et al. 2024, "GQSA: Group Quantization and Sparsity for
    Accelerating LLM Inference", arXiv:2412.17560, Sec. 3.1).

    In every output row, the ``int(n_groups · fraction)`` groups of ``size`` consecutive inputs with the lowest
    summed Wanda score are dropped whole (the same count in every row, so rows stay equally long for the BSR kernel),
    then the kept weights absorb the pruning error through the OBS sweep with that fixed mask (the SparseGPT/GPTQ
    update, damped ``damp`` × mean(diag H), lazy blocks of ``block``). The int4 group quantization of the kept weights
    (W4S50) is the ``gptq`` quantizer run with this mask: ``--method gqsa --sparsity 0.5 --quant w4g16``, where the
    sparsity group equals the quantization group.

    Deviation: the paper scores groups with its own Hessian-aware saliency and then runs a second stage (BQPO: block
    -wise optimisation of the quantization parameters against the dense block, then end-to-end tuning of the
    scales); we use summed Wanda scores with one-shot OBS compensation and do not run the second stage (it needs
    gradient training, beyond this project's CPU budget).
    """
    if not isinstance(sparsity, Groups):
        raise UserInputError(f"--method gqsa drops whole groups; give --sparsity 0.5 (groups of 16, or the --quant "
                             f"group) or 0.5@g16, not {sparsity}")
    if stats is None or stats.input_sq_norms is None or stats.hessian is None:
        raise UserInputError(f"{name or 'layer'}: gqsa needs input norms and the Hessian; run with calibration data")
    rows, cols = weight.shape
    if cols % sparsity.size:
        raise UserInputError(f"{name or 'layer'}: input dimension {cols} is not divisible by the group size "
                             f"{sparsity.size}; choose a group that divides it or exclude the layer with --ignore")
    W = weight.clone().to(torch.promote_types(weight.dtype, torch.float32))
    keep = groups(group_scores(W, stats.input_sq_norms), sparsity.size, sparsity.fraction)
    H = stats.hessian.clone().to(W.dtype)
    obs.mask_dead_inputs_(H, W)
    Hinv, damp_used = obs.damped_inverse_cholesky(H, damp, name=name)
    result = obs.sweep(W, Hinv, block=block, mask=keep, group=sparsity.size)
    return Pruned(result.weight, result.mask, {"damp_used": damp_used, "obs_loss": float(result.loss.sum())})
