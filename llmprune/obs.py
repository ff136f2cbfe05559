"""Optimal-brain-surgeon machinery shared by SparseGPT, GPTQ, joint sparse+quant, SpQR and GQSA.

Source: SparseGPT (Frantar & Alistarh 2023, arXiv:2301.00774, Alg. 1) and GPTQ (Frantar et al. 2022,
arXiv:2210.17323, Sec. 4): the inverse Hessian's upper Cholesky factor ``U`` (H⁻¹ = UᵀU) gives, row by row, the
error-compensation coefficients for eliminating one column after another; updates are applied lazily per block of
columns.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, Protocol

import torch
from torch import Tensor

from .errors import NumericalError

MAX_RETRIES = 3


def mask_dead_inputs_(H: Tensor, W: Tensor) -> Tensor:
    """Inputs that were always zero have H_jj = 0: set H_jj = 1 and W[:, j] = 0 (as the reference does). In place."""
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    return dead


def damped_inverse_cholesky(H: Tensor, damp: float, *, name: str = "") -> tuple[Tensor, float]:
    """Upper Cholesky factor of (H + λI)⁻¹ with λ = damp · mean(diag H).

    A failed factorization retries with damp × 10, up to ``MAX_RETRIES`` times, warns once naming the layer and
    returns the damping actually used. It never falls back to an identity inverse: if it still fails it raises.
    """
    if not bool(torch.isfinite(H).all()):  # no damping can fix this; say where the problem really is
        raise NumericalError(f"{name or 'layer'}: its input statistics are not finite (inf/NaN activations): an "
                             f"earlier layer's compression diverged; try milder settings for the earlier layers")
    mean_diag = torch.mean(torch.diag(H)).item()
    eye = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    used = damp
    for attempt in range(MAX_RETRIES + 1):
        used = damp * 10**attempt
        L, info = torch.linalg.cholesky_ex(H + used * mean_diag * eye)
        if int(info) == 0:
            Hinv = torch.cholesky_inverse(L)
            U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
            if int(info) == 0 and bool(torch.isfinite(U).all()):
                if attempt:
                    warnings.warn(f"{name or 'layer'}: Cholesky failed, succeeded with damp={used:g}", stacklevel=2)
                return U, used
    raise NumericalError(
        f"{name or 'layer'}: Hessian not positive definite even with damp={used:g}; "
        f"raise --damp or use more calibration samples"
    )


class ColumnQuantizer(Protocol):
    """Quantizes one column during the sweep. ``ahead`` holds the current (already updated, masked) weights of this
    column and the rest of its block, so a group quantizer can set its scale at a group boundary (GPTQ)."""

    def __call__(self, j: int, w: Tensor, ahead: Tensor) -> Tensor: ...


@dataclass
class SweepResult:
    weight: Tensor  # [rows, cols], pruned entries exactly 0, quantized values if a quantizer was given
    mask: Tensor  # [rows, cols] bool keep-mask
    loss: Tensor  # [rows] Σ (w - q)² / [H⁻¹]_jj² / 2, the OBS objective estimate


BlockMask = Callable[[Tensor, Tensor], Tensor]  # (W1 [rows, count], d = diag(Hinv1) [count]) -> keep mask


def sweep(
    W: Tensor,
    Hinv: Tensor,
    *,
    block: int = 128,
    block_mask: BlockMask | None = None,
    nm: tuple[int, int] | None = None,
    quantize: ColumnQuantizer | None = None,
    mask: Tensor | None = None,
    group: int = 0,
) -> SweepResult:
    """Blocked lazy OBS sweep over the columns of ``W`` (modified in place and returned).

    Mask choice, as in SparseGPT: ``block_mask`` is asked every ``block`` columns (adaptive mask selection across all
    rows), ``nm=(n, m)`` chooses n kept of every m at the start of each m-group, both on the already-updated weights;
    or a fixed ``mask`` is given. Without any of them nothing is pruned (pure GPTQ). ``group`` (a quantization group
    size) makes the lazy-update block a multiple of it, so a group never straddles a lazy update; with a
    ``block_mask`` the lazy block is also a multiple of ``block`` (e.g. 384 columns for groups of 96), so each mask
    block still spans exactly ``block`` columns, as in the reference, whatever the group size.
    """
    rows, cols = W.shape
    unit = math.lcm(nm[1] if nm else 1, group or 1)
    if block_mask is not None:
        unit = math.lcm(unit, block)
    lazy = max(unit, (block // unit) * unit)
    choose = _mask_chooser(block_mask, block, nm)
    keep = torch.ones_like(W, dtype=torch.bool) if mask is None else mask.clone()
    losses = torch.zeros(rows, dtype=W.dtype, device=W.device)
    for i1 in range(0, cols, lazy):
        i2 = min(i1 + lazy, cols)
        W1 = W[:, i1:i2].clone()
        Hinv1 = Hinv[i1:i2, i1:i2]
        d = torch.diag(Hinv1)
        K1 = keep[:, i1:i2]
        if quantize is None:
            Err1 = _prune_block_(W1, Hinv1, d, K1, choose)
        else:
            Err1 = _quantize_block_(W1, Hinv1, d, K1, choose, quantize, i1)
        losses += (Err1**2).sum(1) / 2
        W[:, i1:i2] = W1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return SweepResult(W, keep, losses)


Chooser = Callable[[Tensor, Tensor, Tensor, int], None]  # (K1, W1, d, i): set K1's columns that start at i


def _mask_chooser(block_mask: BlockMask | None, block: int, nm: tuple[int, int] | None) -> Chooser | None:
    """What to do before column ``i`` of a lazy block (whose start is a multiple of ``block`` and of ``m``)."""
    if block_mask is not None:
        def choose_block(K1: Tensor, W1: Tensor, d: Tensor, i: int) -> None:
            if i % block == 0:
                K1[:, i : i + block] = block_mask(W1[:, i : i + block], d[i : i + block])
        return choose_block
    if nm is not None:
        def choose_nm(K1: Tensor, W1: Tensor, d: Tensor, i: int) -> None:
            if i % nm[1] == 0:
                _choose_nm_(K1, W1, d, i, nm)
        return choose_nm
    return None


def _choose_nm_(K1: Tensor, W1: Tensor, d: Tensor, i: int, nm: tuple[int, int]) -> None:
    """At the start of an M-group: keep the n of m with the largest w²/[H⁻¹]_jj² on the current weights."""
    n, m = nm
    tmp = W1[:, i : i + m] ** 2 / d[i : i + m].reshape(1, -1) ** 2
    order = torch.sort(tmp, dim=1, stable=True).indices[:, : m - n]
    K1[:, i : i + m] = torch.ones_like(tmp, dtype=torch.bool).scatter_(1, order, False)


def _prune_block_(W1: Tensor, Hinv1: Tensor, d: Tensor, K1: Tensor, choose: Chooser | None) -> Tensor:
    """Pruning only: err_j = w_j·[pruned]/U_jj, rank-1 update of the rest of the block. Returns the scaled errors.

    After its own update a pruned column is w - (w/U_jj)·U_jj = 0 up to rounding; it is zeroed exactly at the end.
    """
    Err1 = torch.zeros_like(W1)
    for i in range(W1.shape[1]):
        if choose is not None:
            choose(K1, W1, d, i)
        err = W1[:, i].masked_fill(K1[:, i], 0) / d[i]
        W1[:, i:].addr_(err, Hinv1[i, i:], alpha=-1)
        Err1[:, i] = err
    W1.mul_(K1)
    return Err1


def _quantize_block_(W1: Tensor, Hinv1: Tensor, d: Tensor, K1: Tensor, choose: Chooser | None,
                     quantize: ColumnQuantizer, i1: int) -> Tensor:
    """Pruning and/or quantization: q_j = Q(w_j·keep_j)·keep_j, err_j = (w_j - q_j)/U_jj (SparseGPT Alg. 1, GPTQ)."""
    Err1 = torch.zeros_like(W1)
    for i in range(W1.shape[1]):
        if choose is not None:
            choose(K1, W1, d, i)
        w = W1[:, i]
        keep = K1[:, i]
        q = quantize(i1 + i, w * keep, W1[:, i:] * K1[:, i:]) * keep
        err = (w - q) / d[i]
        W1[:, i:].addr_(err, Hinv1[i, i:], alpha=-1)
        W1[:, i] = q
        Err1[:, i] = err
    return Err1
