"""Independent oracle for SparseGPT/GPTQ: column-by-column OBS in float64 with explicit inverses.

No Cholesky trick and no lazy batching: before eliminating column j it inverts the damped Hessian restricted to the
columns not yet processed, F = {j, ..., n-1}, and applies the OBS update δw_F = -(w_j - q_j) / [H_F⁻¹]_jj · [H_F⁻¹]_{:, j}.
Mask choices use the same saliency w² / [H_F⁻¹]_jj as SparseGPT, evaluated at the same moments (block starts for
unstructured sparsity, M-group starts for N:M).
"""
from __future__ import annotations

import torch


def _inv_diag_head(H: torch.Tensor, c: int) -> torch.Tensor:
    return torch.linalg.inv(H[c:, c:])[0, 0]


def obs_unblocked(W, H, *, damp=0.01, fraction=None, nm=None, block=128, quantize=None):
    """Return (W_new, keep_mask). ``quantize(j, column) -> column`` optionally quantizes each kept column."""
    W = W.double().clone()
    H = H.double().clone()
    rows, cols = W.shape
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H += damp * torch.mean(torch.diag(H)) * torch.eye(cols, dtype=H.dtype)
    keep = torch.ones(rows, cols, dtype=torch.bool)
    for j in range(cols):
        if fraction is not None and j % block == 0:
            cs = range(j, min(j + block, cols))
            sal = torch.stack([W[:, c] ** 2 / _inv_diag_head(H, c) for c in cs], dim=1)
            flat = sal.flatten()
            count = int(flat.numel() * fraction)
            pruned = sorted(range(flat.numel()), key=lambda k: (float(flat[k]), k))[:count]
            block_keep = torch.ones(flat.numel(), dtype=torch.bool)
            block_keep[pruned] = False
            keep[:, j : j + len(cs)] = block_keep.reshape(rows, len(cs))
        if nm is not None and j % nm[1] == 0:
            n, m = nm
            sal = torch.stack([W[:, c] ** 2 / _inv_diag_head(H, c) for c in range(j, j + m)], dim=1)
            for r in range(rows):
                order = sorted(range(m), key=lambda k: (float(sal[r, k]), k))
                for k in order[: m - n]:
                    keep[r, j + k] = False
        Hinv_F = torch.linalg.inv(H[j:, j:])
        w = W[:, j].clone()
        q = w * keep[:, j]
        if quantize is not None:
            q = quantize(j, q) * keep[:, j]
        err = (w - q) / Hinv_F[0, 0]
        W[:, j:] -= err.unsqueeze(1) * Hinv_F[0, :].unsqueeze(0)
        W[:, j] = q
    return W, keep
