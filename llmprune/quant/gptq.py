"""GPTQ: error-compensating k-bit quantization, alone or joined with SparseGPT's pruning in one sweep.

GPTQ (Frantar et al. 2022, arXiv:2210.17323, Alg. 1) quantizes the columns of W one after another and spreads each
column's error over the columns not yet quantized through the upper Cholesky factor of the damped inverse Hessian
(blocked lazy updates). The loop is ``obs.sweep``, shared with SparseGPT; this file only supplies the column
quantizer, which records the integer codes and each group's scale/zero as it goes, so nothing is quantized twice.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .. import obs
from ..errors import UserInputError
from ..masks import per_layer
from ..options import flag
from ..recipe import NM, Groups, QuantSpec, Sparsity
from ..types import QuantizedWeight, Stats
from . import QUANTIZERS
from .bits_per_param import bits_per_param
from .uniform import (check_quant_shape, dequantize, effective_group, expand, find_params, quantize_codes,
                      stored_scale)


class GroupQuantizer:
    """``obs.ColumnQuantizer`` that fits a group's grid at the group's first column from ``ahead[:, :group]``
    (the current, already-compensated and masked weights, as GPTQ's reference does) and records codes and grids.

    ``static=(scale, zero)`` fixes one grid per row up front (per-channel quantization: GPTQ fits it on the whole W
    before the sweep). ``scale_dtype``: each grid's scale is rounded as it will be stored (``uniform.stored_scale``)
    before any code is chosen on it, so the compensated error is that of the stored weights.
    """

    def __init__(self, W: Tensor, bits: int, group: int, symmetric: bool, static: tuple[Tensor, Tensor] | None,
                 scale_dtype: torch.dtype | None = None):
        rows, cols = W.shape
        self.bits, self.group, self.symmetric, self.scale_dtype = bits, group, symmetric, scale_dtype
        self.codes = torch.zeros_like(W)
        self.scales = W.new_zeros(rows, -(-cols // group))
        self.zeros = W.new_zeros(rows, -(-cols // group))
        self.static = static is not None
        if static is not None:
            self.scales[:, 0], self.zeros[:, 0] = stored_scale(static[0], scale_dtype), static[1]

    def __call__(self, j: int, w: Tensor, ahead: Tensor) -> Tensor:
        k = j // self.group
        if not self.static and j % self.group == 0:
            scale, self.zeros[:, k] = find_params(ahead[:, : self.group], self.bits, self.symmetric)
            self.scales[:, k] = stored_scale(scale, self.scale_dtype)
        scale, zero = self.scales[:, k], self.zeros[:, k]
        codes = quantize_codes(w, scale, zero, self.bits)
        self.codes[:, j] = codes
        return dequantize(codes, scale, zero)


def act_order_perm(diag: Tensor, group: int) -> Tensor:
    """Column order by decreasing diag(H) (GPTQ's ``--act-order``), keeping quantization groups contiguous.

    Per-row grids (``group == in``) use the plain order. With groups, whole groups are ordered by their summed
    diag(H) and the columns inside each group by their own diag(H), so every group is still one set of consecutive
    original columns and ``QuantizedWeight`` keeps its plain ``c // group`` layout (no group-index map). A shorter
    last group stays last, so group boundaries stay at multiples of ``group`` in the permuted order too.

    Deviation: GPTQ's act-order sorts all columns freely and forms groups over the permuted order (which needs a
    ``g_idx`` map at inference); our order is the closest one that keeps groups contiguous.
    """
    cols = diag.numel()
    if group >= cols:
        return torch.sort(diag, descending=True, stable=True).indices
    full = cols - cols % group
    d = diag[:full].reshape(-1, group)
    within = torch.sort(d, dim=1, descending=True, stable=True).indices
    within = within + torch.arange(d.shape[0], device=diag.device).unsqueeze(1) * group
    order = torch.sort(d.sum(1), descending=True, stable=True).indices
    tail = torch.sort(diag[full:], descending=True, stable=True).indices + full
    return torch.cat([within[order].reshape(-1), tail])


def unpermute(perm: Tensor, group: int, columns: list[Tensor], grids: list[Tensor]) -> tuple[list, list]:
    """Back to the original column order: per-column tensors by ``perm``, per-group tensors by the group order."""
    inverse = torch.argsort(perm)
    group_inverse = torch.argsort(perm[::group] // group)  # permuted group k holds original group perm[k·g] // g
    return [c[:, inverse] for c in columns], [g[:, group_inverse] for g in grids]


def quantized_sweep(weight: Tensor, stats: Stats, spec: QuantSpec, *, damp: float, block: int, name: str,
                    act_order: bool = False, scale_dtype: torch.dtype | None = None,
                    **pattern) -> tuple[QuantizedWeight, dict]:
    """Shared body of ``gptq`` and ``sparsegpt_quant``: ``pattern`` is what ``obs.sweep`` takes to choose or keep a
    mask (``mask=``, ``nm=`` or ``block_mask=``); without one the weight stays dense."""
    if stats is None or stats.hessian is None:
        raise UserInputError(f"{name or 'layer'}: GPTQ needs the Hessian statistics; run with calibration data")
    rows, cols = weight.shape
    check_quant_shape(cols, spec, name)
    group = effective_group(spec, cols)
    W = weight.clone().to(torch.promote_types(weight.dtype, torch.float32))
    H = stats.hessian.clone().to(W.dtype)
    obs.mask_dead_inputs_(H, W)
    mask = pattern.get("mask")
    perm = act_order_perm(torch.diag(H), group) if act_order else None
    if perm is not None:
        W, H = W[:, perm], H[perm][:, perm]
        mask = None if mask is None else mask[:, perm]
    pattern = {k: v for k, v in pattern.items() if v is not None and k != "mask"}
    Hinv, damp_used = obs.damped_inverse_cholesky(H, damp, name=name)
    static = find_params(W if mask is None else W * mask, spec.bits, spec.symmetric) if group == cols else None
    quantizer = GroupQuantizer(W, spec.bits, group, spec.symmetric, static, scale_dtype)
    result = obs.sweep(W, Hinv, block=block, quantize=quantizer, mask=mask, group=0 if static else group,
                       **pattern)
    codes = torch.where(result.mask, quantizer.codes, expand(quantizer.zeros, group, cols))
    keep, scales, zeros = result.mask, quantizer.scales, quantizer.zeros
    if perm is not None:
        (codes, keep), (scales, zeros) = unpermute(perm, group, [codes, keep], [scales, zeros])
    sparse = mask is not None or bool(pattern)
    qw = QuantizedWeight(codes.to(torch.uint8), scales.float(), zeros.float(), spec.bits, group, spec.symmetric,
                         mask=keep if sparse else None)
    info = {"damp_used": damp_used, "obs_loss": float(result.loss.sum()), "act_order": bool(act_order),
            "bits_per_param": bits_per_param(qw)}
    return qw, info


@QUANTIZERS.register("gptq", needs=frozenset({"hessian"}))
def gptq(weight: Tensor, stats: Stats, spec: QuantSpec, *, mask: Tensor | None = None, damp: float = 0.01,
         block: int = 128, act_order: bool = False, scale_dtype: torch.dtype | None = None,
         name: str = "") -> tuple[QuantizedWeight, dict]:
    """GPTQ as its reference code does it: H = 2XXᵀ/T, dead inputs zeroed, damping ``damp`` × mean(diag H), groups'
    grids fitted at their first column on the compensated weights, lazy blocks of ``block`` columns.

    With a fixed keep-``mask`` the pruned weights are held at 0 (their codes are the zero point) and the sweep
    compensates the error of each weight it is given: ``compress_`` gives the weight as the pruning method left it
    (magnitude and Wanda set pruned weights to 0 and update nothing, as their papers define them), so only the kept
    weights' quantization error is compensated: prune, then quantize. A dense weight with a mask would compensate
    the pruning error too (lower reconstruction error, but no longer Wanda's weights); SparseGPT + GPTQ does that in
    one sweep (``sparsegpt_quant``).

    Deviations from the reference: (1) a group's grid is fitted on its weights as compensated so far, including
    the updates from earlier columns of the same lazy block; the reference fits groups that start inside a block
    on weights that miss those updates (the same only when the group is a multiple of ``block``; with groups of
    16-64 this gives other codes, at a lower measured reconstruction error). (2) A per-row grid (no groups) is
    fitted after dead inputs' weights are zeroed, the reference fits it before (the same unless an input is dead:
    those weights are zeroed either way and no longer widen the grid here).
    ``act_order`` follows GPTQ's ``--act-order`` with groups kept contiguous (see ``act_order_perm``).
    """
    return quantized_sweep(weight, stats, spec, damp=damp, block=block, name=name,
                           act_order=flag(act_order, "act_order"), scale_dtype=scale_dtype, mask=mask)


def sparsegpt_quant(weight: Tensor, stats: Stats, sparsity: Sparsity, spec: QuantSpec, *, damp: float = 0.01,
                    block: int = 128, scale_dtype: torch.dtype | None = None,
                    name: str = "") -> tuple[QuantizedWeight, dict]:
    """Joint SparseGPT + GPTQ in one sweep (SparseGPT, Frantar & Alistarh 2023, Sec. 3.5 "Joint
    Sparsification & Quantization"): the mask is chosen inside the sweep as SparseGPT does (per block across rows by
    w²/[H⁻¹]²_jj, or per N:M group on the updated weights), each kept weight is quantized, and the error of both is
    compensated on the columns to the right.

    Deviation: SparseGPT's reference supports per-row grids only; with groups, a group's grid is fitted on its kept
    weights at its first column (GPTQ), using the masks chosen so far. For N:M the m-groups to the right of the
    current one are not chosen yet when a grid is fitted, so their (about to be pruned) weights still take part in
    the min-max; the same holds for unstructured sparsity when a group reaches past the current 128-column mask block
    (a group size that neither divides the block nor is a multiple of it, e.g. g96, g192): measured on a random
    16x576 layer at 50%, about a third of the pruned weights entered their group's fit, raising its scale by 0.3-0.4%
    on average (at most 11-17%). Group sizes that divide 128 (g16-g128) fit on kept weights only.
    """
    if isinstance(sparsity, Groups):
        raise UserInputError("sparsegpt does not choose group masks; use --method gqsa for group sparsity")
    if isinstance(sparsity, NM):
        return quantized_sweep(weight, stats, spec, damp=damp, block=block, name=name, scale_dtype=scale_dtype,
                               nm=(sparsity.n, sparsity.m))

    def block_mask(W1: Tensor, d: Tensor) -> Tensor:
        return per_layer(W1**2 / d.reshape(1, -1) ** 2, sparsity.fraction)

    return quantized_sweep(weight, stats, spec, damp=damp, block=block, name=name, scale_dtype=scale_dtype,
                           block_mask=block_mask)
