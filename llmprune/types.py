"""The data that flows between the engine, the algorithms and the packers.

Algorithms see tensors only: a weight ``[out_features, in_features]`` (float32, Conv1D already transposed), a ``Stats``
record of its input statistics, and a target pattern; they return a ``Pruned`` or a ``QuantizedWeight``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class Stats:
    """Input statistics of one Linear, accumulated in float32 over the calibration tokens as running means.

    input_sq_norms: [in] — Σ_t x_tj² / tokens (Wanda's ``scaler_row``; ‖X_j‖₂ = sqrt(tokens · input_sq_norms)).
    hessian:        [in, in] — 2·Σ_t x_t x_tᵀ / tokens (SparseGPT/GPTQ's H).
    input_mean:     [in] — Σ_t x_tj / tokens (DSnoT's expected input).
    input_var:      [in] — per-feature variance of the input (DSnoT's variance term).
    tokens:         number of calibration tokens seen.
    """

    input_sq_norms: Tensor | None = None
    hessian: Tensor | None = None
    input_mean: Tensor | None = None
    input_var: Tensor | None = None
    tokens: int = 0


@dataclass
class Pruned:
    """A pruned weight and its keep-mask (True = kept). ``weight`` may differ from the input on kept entries
    (SparseGPT updates them); pruned entries are exactly zero."""

    weight: Tensor
    mask: Tensor
    info: dict = field(default_factory=dict)  # e.g. {"damp_used": 0.01, "cholesky_retries": 0}


@dataclass
class QuantizedWeight:
    """Integer codes and their statistics, kept as data so packing never quantizes a second time.

    codes:  [out, in] uint8 — integers in [0, 2**bits - 1]; pruned positions hold the zero point (dequantize to 0).
    scales: [out, n_groups] float32 — one per group of ``group`` consecutive input weights (n_groups = ceil(in/group)).
    zeros:  [out, n_groups] float32 — zero points: integer-valued for the uniform grids (RTN/GPTQ; symmetric: the
            constant 2**(bits-1)); float for SpQR, whose zero points are themselves quantized (second level).
    mask:   [out, in] bool or None — keep-mask of the sparsity pattern (None = dense).
    outliers: None or (row_ptr [out+1] int64, col_idx [nnz] int32, values [nnz] float16) — CSR of weights kept exactly
            in 16 bits (SpQR); those positions' codes are ignored.
    extra:  format-specific data (e.g. SpQR's bilevel quantized statistics), plain tensors and ints only.

    Dequantized weight: W[r, c] = (codes[r, c] - zeros[r, c // group]) * scales[r, c // group], then the outliers
    overwrite their positions.
    """

    codes: Tensor
    scales: Tensor
    zeros: Tensor
    bits: int
    group: int
    symmetric: bool = False
    mask: Tensor | None = None
    outliers: tuple[Tensor, Tensor, Tensor] | None = None
    extra: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.codes.shape)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> Tensor:
        out_f, in_f = self.codes.shape
        g = torch.arange(in_f, device=self.codes.device) // (self.group or in_f)  # 0: one group per row
        w = (self.codes.to(torch.float32) - self.zeros[:, g]) * self.scales[:, g]
        if self.mask is not None:
            w = w * self.mask
        if self.outliers is not None:
            row_ptr, col_idx, values = self.outliers
            rows = torch.repeat_interleave(torch.arange(out_f, device=w.device), row_ptr.diff())
            w[rows, col_idx.long()] = values.to(torch.float32)
        return w.to(dtype)
