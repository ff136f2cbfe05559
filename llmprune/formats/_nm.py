"""2:4 position selection shared by ``sparse24`` and ``sparse24_int4`` (docs/FORMATS.md, the ``meta`` tensor).

In every group of 4 consecutive input columns at most 2 weights are kept; the format always stores exactly 2
positions p0 < p1 per group (a group with fewer kept weights is filled with its lowest unused positions, which hold
exact zeros), as NVIDIA's sparse tensor cores and cuSPARSELt's metadata do.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..errors import UserInputError
from .bits import pack_nibbles, unpack_nibbles


def check_24(fmt: str, out_features: int, in_features: int) -> None:
    if in_features % 8:
        raise UserInputError(f"--format {fmt}: in_features {in_features} of a {out_features}x{in_features} Linear is "
                             f"not a multiple of 8 (2:4 metadata packs two groups of 4 per byte); use --format int4 "
                             f"or dense")


def positions(keep: Tensor, fmt: str) -> Tensor:
    """``keep [out, in]`` bool -> kept column positions ``[out, in/4, 2]`` (int64, ascending within each group)."""
    out_features, in_features = keep.shape
    groups = keep.reshape(out_features, in_features // 4, 4)
    counts = groups.sum(-1)
    if counts.numel() and int(counts.max()) > 2:
        row, grp = (counts > 2).nonzero()[0].tolist()
        raise UserInputError(f"--format {fmt}: the weight is not 2:4 sparse (row {row}, columns "
                             f"{4 * grp}..{4 * grp + 3} keep {int(counts[row, grp])} of 4); prune with --sparsity 2:4")
    order = torch.arange(3, -1, -1, device=keep.device)  # prefer kept positions, then the lowest indices
    key = groups.to(torch.int64) * 4 + order
    return key.topk(2, dim=-1).indices.sort(dim=-1).values


def pack_meta(pos: Tensor) -> Tensor:
    """Positions ``[out, in/4, 2]`` -> ``meta [out, in/8]`` uint8 (nibble ``p0 | p1 << 2`` per group)."""
    return pack_nibbles(pos[..., 0] | (pos[..., 1] << 2))


def unpack_meta(meta: Tensor) -> Tensor:
    """``meta [out, in/8]`` -> absolute column indices ``[out, in/2]`` (int64) of the stored values."""
    nib = unpack_nibbles(meta).to(torch.int64)
    pos = torch.stack((nib & 3, (nib >> 2) & 3), dim=-1)
    base = 4 * torch.arange(nib.shape[1], device=meta.device).unsqueeze(-1)
    return (pos + base).reshape(meta.shape[0], -1)


def scatter_dense(values: Tensor, meta: Tensor, fill: Tensor | float = 0) -> Tensor:
    """Place ``values [out, in/2]`` at the columns ``meta`` encodes in a ``[out, in]`` matrix filled with ``fill``."""
    cols = unpack_meta(meta)
    dense = torch.zeros(values.shape[0], values.shape[1] * 2, dtype=values.dtype, device=values.device)
    if not isinstance(fill, (int, float)) or fill != 0:
        dense = dense + fill
    return dense.scatter(1, cols, values)
