"""Independent oracles for GPTQ, joint SparseGPT+GPTQ and SpQR: column by column, float64, explicit inverses.

No Cholesky factor and no lazy blocks: before quantizing column j the damped Hessian restricted to the columns not yet
processed, F = {j, ..., n-1}, is inverted, and the OBS update is written directly:
    δw_F = -(w_j - q_j) / [H_F⁻¹]_00 · [H_F⁻¹]_{0, :}.
Grids are min-max grids written out here (not imported from llmprune). A group's grid is fitted when its first
column comes up, on the current (updated, masked) weights of the group: what GPTQ's reference does when its block
is a multiple of the group (with smaller groups it fits those starting inside a block on weights that miss that
block's earlier updates; llmprune's documented deviation).
"""
from __future__ import annotations

import torch


def minmax_grid(x, bits, symmetric=False, clamp_zero=True, round_zero=True):
    """Row-wise grid of ``x [rows, k]`` -> (scale, zero) [rows], float64, row by row in plain Python."""
    top = 2**bits - 1
    scales, zeros = [], []
    for row in x.double():
        lo, hi = float(row.min()), float(row.max())
        if clamp_zero:
            lo, hi = min(lo, 0.0), max(hi, 0.0)
        if symmetric:
            hi = max(abs(lo), hi)
            lo = -hi
        if lo == hi:
            lo, hi = -1.0, 1.0
        s = (hi - lo) / top
        z = (top + 1) / 2 if symmetric else (-lo / s)
        scales.append(s)
        zeros.append(round(z) if round_zero and not symmetric else z)
    return torch.tensor(scales, dtype=torch.float64), torch.tensor(zeros, dtype=torch.float64)


def round_codes(w, s, z, bits, zero_inside=False):
    top = 2**bits - 1
    raw = torch.round(w / s + z) if zero_inside else torch.round(w / s) + z
    return raw.clamp(0, top)


def _damped(W, H, damp):
    W, H = W.double().clone(), H.double().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H += damp * torch.mean(torch.diag(H)) * torch.eye(H.shape[0], dtype=H.dtype)
    return W, H


def _head(H, c):
    return torch.linalg.inv(H[c:, c:])[0, 0]


def _choose(W, H, keep, j, cols, fraction, nm, block):
    """SparseGPT's mask choice at block starts (unstructured, across rows) or m-group starts (N:M)."""
    rows = W.shape[0]
    if fraction is not None and j % block == 0:
        cs = list(range(j, min(j + block, cols)))
        sal = torch.stack([W[:, c] ** 2 / _head(H, c) for c in cs], dim=1).flatten()
        order = sorted(range(sal.numel()), key=lambda k: (float(sal[k]), k))[: int(sal.numel() * fraction)]
        flat = torch.ones(sal.numel(), dtype=torch.bool)
        flat[order] = False
        keep[:, j : j + len(cs)] = flat.reshape(rows, len(cs))
    if nm is not None and j % nm[1] == 0:
        n, m = nm
        sal = torch.stack([W[:, c] ** 2 / _head(H, c) for c in range(j, j + m)], dim=1)
        for r in range(rows):
            for k in sorted(range(m), key=lambda k: (float(sal[r, k]), k))[: m - n]:
                keep[r, j + k] = False


def gptq_unblocked(W, H, *, bits, group, symmetric=False, damp=0.01, mask=None, fraction=None, nm=None, block=128):
    """Returns (dequantized W float64, codes float64, keep). ``group == cols`` = one grid per row, fitted up front on
    the whole (masked) W as GPTQ does; ``bits=None`` prunes only; ``mask`` fixed, or ``fraction``/``nm`` chosen as
    SparseGPT does."""
    W, H = _damped(W, H, damp)
    rows, cols = W.shape
    keep = torch.ones(rows, cols, dtype=torch.bool) if mask is None else mask.clone()
    codes = torch.zeros(rows, cols, dtype=torch.float64)
    s = z = None
    if bits is not None and group == cols:
        s, z = minmax_grid(W * keep, bits, symmetric)
    for j in range(cols):
        _choose(W, H, keep, j, cols, fraction, nm, block)
        if bits is not None and group != cols and j % group == 0:
            s, z = minmax_grid(W[:, j : j + group] * keep[:, j : j + group], bits, symmetric)
        Hinv_F = torch.linalg.inv(H[j:, j:])
        w = W[:, j].clone()
        if bits is None:  # pure pruning (SparseGPT)
            q = w * keep[:, j]
        else:
            c = round_codes(w * keep[:, j], s, z, bits)
            q = (c - z) * s * keep[:, j]
            codes[:, j] = torch.where(keep[:, j], c, z)
        W[:, j:] -= ((w - q) / Hinv_F[0, 0]).unsqueeze(1) * Hinv_F[0, :].unsqueeze(0)
        W[:, j] = q
    return W, codes, keep


def _stat_level(x, stat_bits, stat_group):
    """SpQR's second level on a column of first-level statistics, float16-rounded 16-bit scale/zero."""
    out = torch.empty_like(x)
    top = 2**stat_bits - 1
    for start in range(0, x.numel(), stat_group):
        part = x[start : start + stat_group]
        lo, hi = float(part.min()), float(part.max())
        s, z = (1.0, -lo) if lo == hi else ((hi - lo) / top, -lo / ((hi - lo) / top))
        s = max(float(torch.tensor(s).half()), 2.0**-24)
        z = float(torch.tensor(z).half())
        code = torch.round(part.float() / s + z).clamp(0, top)
        out[start : start + stat_group] = ((code - z) * s).double()
    return out


def _loo_gain(gw, d, bits):
    """Brute force: for each weight, refit the grid without it and compare Hessian-weighted group errors."""
    rows, g = gw.shape

    def err(x, dd):
        s, z = minmax_grid(x, bits, clamp_zero=False, round_zero=False)
        q = (round_codes(x, s.unsqueeze(1), z.unsqueeze(1), bits, True) - z.unsqueeze(1)) * s.unsqueeze(1)
        return (((q - x) / dd) ** 2).sum(1)

    base = err(gw, d)
    gain = torch.empty(rows, g, dtype=torch.float64)
    for k in range(g):
        others = [c for c in range(g) if c != k]
        gain[:, k] = base - err(gw[:, others], d[others])
    return gain


def spqr_unblocked(W, H, *, bits, group, rel_threshold, stat_bits=3, stat_group=16, damp=1.0):
    """SpQR without act-order (identity order). Returns (dequantized W float64, outlier mask)."""
    W, H = _damped(W, H, damp)
    rows, cols = W.shape
    heads = torch.tensor([_head(H, c) for c in range(cols)], dtype=torch.float64)  # [H_F⁻¹]_00 = U_jj²
    d = heads.sqrt()
    thr = rel_threshold * float((W.var(dim=0) / heads).mean())
    outlier = torch.zeros(rows, cols, dtype=torch.bool)
    for j in range(cols):
        if j % group == 0:
            gw = W[:, j : j + group].clone()
            likely = _loo_gain(gw, d[j : j + group], bits) > thr
            for r in range(rows):
                if likely[r].any():
                    normal = gw[r][~likely[r]]
                    gw[r][likely[r]] = normal.mean() if normal.numel() else 0.0
            s, z = minmax_grid(gw, bits, clamp_zero=False, round_zero=False)
            for r in range(rows):  # llmprune's floor: scale >= amax / 256, the grid starting at the row's minimum
                s[r] = max(float(s[r]), float(gw[r].abs().max()) / 256)
                z[r] = -float(gw[r].min()) / float(s[r])
            s, z = _stat_level(s, stat_bits, stat_group), _stat_level(z, stat_bits, stat_group)
        Hinv_F = torch.linalg.inv(H[j:, j:])
        w = W[:, j].clone()
        q = (round_codes(w, s, z, bits, True) - z) * s
        out = ((w - q) / d[j]) ** 2 > thr
        q = torch.where(out, w.half().double(), (round_codes(w * ~out, s, z, bits, True) - z) * s)
        outlier[:, j] = out
        W[:, j:] -= ((w - q) / Hinv_F[0, 0]).unsqueeze(1) * Hinv_F[0, :].unsqueeze(0)
        W[:, j] = q
    return W, outlier
