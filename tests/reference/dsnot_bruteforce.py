"""Brute-force DSnoT oracle in float64: one row at a time, every error recomputed from scratch from the masks.

Independent of ``llmprune.refine.dsnot``: no sorted queues, no incremental error updates, plain Python loops. It
follows the rules written in that module's docstring (the paper's criteria with the reference code's stopping
rules), so a vectorized implementation must choose exactly the same swaps.
"""
from __future__ import annotations

import math

import torch


def expected_errors(W, W_sparse, mean) -> list[float]:
    """e_i = Σ_j (W_ij − Ŵ_ij)·E[x_j], summed term by term in float64 (the expected dense-minus-sparse output)."""
    W, W_sparse, mean = W.double().tolist(), W_sparse.double().tolist(), mean.double().tolist()
    return [math.fsum((w - ws) * m for w, ws, m in zip(row, srow, mean)) for row, srow in zip(W, W_sparse)]


def sparse_weight(W, W_hat, keep0, keep):
    """The refined weight: kept base entries keep Ŵ, revived entries take the dense W, the rest are zero."""
    return torch.where(keep & ~keep0, W.double(), W_hat.double()) * keep


def swap_error_change(W, W_hat, keep0, keep, row: int, grow: int, prune: int, mean) -> float:
    """Error change of one swap (revive ``grow``, prune ``prune`` in ``row``), from two direct evaluations."""
    after = keep.clone()
    after[row, grow], after[row, prune] = True, False
    e0 = expected_errors(W[row : row + 1], sparse_weight(W, W_hat, keep0, keep)[row : row + 1], mean)[0]
    e1 = expected_errors(W[row : row + 1], sparse_weight(W, W_hat, keep0, after)[row : row + 1], mean)[0]
    return e1 - e0


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


def _argbest(values: dict[int, float], largest: bool):
    """Index of the best value; ties go to the lower index."""
    if not values:
        return None
    best = max(values.values()) if largest else min(values.values())
    return min(j for j, v in values.items() if v == best)


def dsnot_row(W, W_hat, keep0, mean, var, sq, row: int, *, nm=None, max_cycles=50, update_threshold=0.1,
              pow_var=1.0, sign_check=True, monotone=True, calib_seqlen=2048) -> list[bool]:
    """The refined keep-mask of one row (a list of bools)."""
    cols = W.shape[1]
    Wd, Wh = W.double(), W_hat.double()
    mu, v, q = mean.double(), var.double().clamp_min(1e-12), sq.double()
    keep = [bool(k) for k in keep0[row]]
    init = list(keep)
    used = set()  # grow candidates already consumed (revived, or skipped for a used-up N:M group)

    def error(mask):
        Wr = [float(Wd[row, j]) if mask[j] and not init[j] else (float(Wh[row, j]) if mask[j] else 0.0)
              for j in range(cols)]
        return expected_errors(Wd[row : row + 1], torch.tensor([Wr], dtype=torch.float64), mu)[0]

    e = error(keep)
    s0 = _sign(e)
    for _ in range(max_cycles):
        if not abs(e) * calib_seqlen > update_threshold:
            break
        s = 1 if e > 0 else -1
        score = {j: s * float(Wd[row, j] * mu[j] / v[j] ** pow_var) for j in range(cols)
                 if not init[j] and not keep[j] and j not in used}
        grow = _argbest({j: x for j, x in score.items() if x > 0}, largest=True)
        if grow is None:
            break
        importance = {j: float(Wh[row, j].abs() * q[j].sqrt()) for j in range(cols) if init[j] and keep[j]}
        if nm is None:
            prune = _argbest({j: x for j, x in importance.items() if _sign(float(Wh[row, j] * mu[j])) == -s},
                             largest=False)
            if prune is None:
                break
        else:
            start = grow - grow % nm[1]
            prune = _argbest({j: x for j, x in importance.items() if start <= j < start + nm[1]}, largest=False)
            if prune is None:
                used.add(grow)
                continue
        trial = list(keep)
        trial[grow], trial[prune] = True, False
        after = error(trial)
        if (sign_check and _sign(after) != s0) or (monotone and not abs(after) < abs(e)):
            break
        keep, e = trial, after
        used.add(grow)
    return keep


def dsnot_bruteforce(W, W_hat, keep0, mean, var, sq, **kwargs) -> torch.Tensor:
    """The refined keep-mask of every row, row by row."""
    return torch.tensor([dsnot_row(W, W_hat, keep0, mean, var, sq, r, **kwargs) for r in range(W.shape[0])])
