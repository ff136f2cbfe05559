"""``group_sparse_int4``: GQSA block-sparse rows — per output row, the kept groups' indices, int4 codes and scales.

GQSA (Zeng et al. 2024, arXiv:2412.17560) prunes whole groups of g input columns per row and quantizes the kept
groups to 4 bits with one scale per group, so a row is a short list of dense int4 blocks (block-sparse row, BSR).

Tensors (in % g == 0, g even; every row keeps the same number K of groups):
    group_idx: [out, K], int16 — kept group indices of the row, ascending.
    qweight:   [out, K*g/2], uint8 — nibble-packed codes of the kept groups, in the order of ``group_idx``.
    scales:    [out, K], float16/bfloat16 (float32 allowed; reference path only) — one per kept group.
    zeros:     [out, K], uint8 — integer zero point per kept group.
Rows that keep fewer groups than the busiest row are padded with their lowest unused groups holding the zero point
(exact zeros), so K is uniform (K >= 1). The dense width is not implied by the tensors: ``unpack`` takes it.
The quantization group equals the sparsity group.

Worked example (g = 2, one row of 8 columns = 4 groups, K = 2): weights ``[0, 0, 1, -1, 0, 0, 2, 0.5]``, scales
``[_, 0.5, _, 0.5]``, zero 8: ``group_idx = [1, 3]``, codes ``[10, 6, 12, 9]`` -> ``qweight = [0x6A, 0x9C]``,
``scales = [0.5, 0.5]``, ``zeros = [8, 8]``.

Deviation: GQSA's kernels also store the activation-side group order; here groups stay in column order per row.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import FORMATS, Format, Spec, dtype_name, float_dtype, shape_error
from ..types import QuantizedWeight
from ._quant import check_int4, linear_ref, prepare
from .bits import pack_nibbles, unpack_nibbles


def tensor_specs(out_features: int, in_features: int, group: int, kept: int,
                 dtype: str = "float16") -> dict[str, Spec]:
    return {"group_idx": Spec((out_features, kept), torch.int16),
            "qweight": Spec((out_features, kept * group // 2), torch.uint8),
            "scales": Spec((out_features, kept), float_dtype(dtype)),
            "zeros": Spec((out_features, kept), torch.uint8)}


def check(out_features: int, in_features: int, group: int, kept: int | None = None,
          dtype: str = "float16", bits: int = 4) -> None:
    check_int4("group_sparse_int4", out_features, in_features, group, dtype, bits)
    if group % 2:
        raise shape_error("group_sparse_int4", out_features, in_features, f"group size {group} must be even")
    if in_features // group > 32767:
        raise shape_error("group_sparse_int4", out_features, in_features, "too many groups for int16 indices")
    if kept is not None and not 1 <= kept <= in_features // group:
        raise shape_error("group_sparse_int4", out_features, in_features, f"kept groups {kept} out of range")


def _kept_groups(codes: Tensor, zeros: Tensor, group: int) -> Tensor:
    """Indices ``[out, K]`` of each row's groups holding any non-zero weight, padded to a uniform K, ascending."""
    out_features, in_features = codes.shape
    blocks = codes.reshape(out_features, in_features // group, group)
    live = (blocks != zeros.unsqueeze(-1)).any(-1)
    kept = max(1, int(live.sum(-1).max()))  # at least one slot, so the group size stays readable from the tensors
    order = torch.arange(live.shape[1], 0, -1, device=codes.device)  # live groups first, then the lowest indices
    key = live.to(torch.int64) * (live.shape[1] + 1) + order
    return key.topk(kept, dim=-1).indices.sort(dim=-1).values


def pack(qw: QuantizedWeight, dtype: str = "float16") -> dict[str, Tensor]:
    """Pack a group-sparse ``QuantizedWeight`` (whole groups pruned; the quantization group = the sparsity group)."""
    group, zeros, codes = prepare(qw, "group_sparse_int4", check, dtype)
    out_features, in_features = qw.shape
    idx = _kept_groups(codes, zeros, group)
    blocks = codes.reshape(out_features, in_features // group, group)
    kept_codes = blocks.gather(1, idx.unsqueeze(-1).expand(-1, -1, group)).reshape(out_features, -1)
    return {"group_idx": idx.to(torch.int16).contiguous(), "qweight": pack_nibbles(kept_codes).contiguous(),
            "scales": qw.scales.gather(1, idx).to(float_dtype(dtype)).contiguous(),
            "zeros": zeros.gather(1, idx).contiguous()}


def unpack(packed: dict[str, Tensor], in_features: int | None = None) -> Tensor:
    """The exact dequantized weight, float32 ``[out, in_features]`` (exact zeros in pruned groups).

    The dense width is not implied by the tensors (trailing groups may all be pruned), so it must be given.
    """
    if in_features is None:
        raise TypeError("group_sparse_int4.unpack needs in_features (the dense width is not stored in the tensors)")
    idx = packed["group_idx"].to(torch.int64)
    out_features, kept = idx.shape
    group = packed["qweight"].shape[1] * 2 // kept
    codes = unpack_nibbles(packed["qweight"]).reshape(out_features, kept, group).to(torch.float32)
    zeros = packed["zeros"].to(torch.float32).unsqueeze(-1)
    values = (codes - zeros) * packed["scales"].to(torch.float32).unsqueeze(-1)
    dense = torch.zeros(out_features, in_features // group, group, dtype=torch.float32, device=idx.device)
    dense.scatter_(1, idx.unsqueeze(-1).expand(-1, -1, group), values)
    return dense.reshape(out_features, in_features)


def matmul_ref(x: Tensor, packed: dict[str, Tensor]) -> Tensor:
    return linear_ref(x, unpack(packed, x.shape[-1]))


def params(packed: dict[str, Tensor], in_features: int) -> dict:
    idx = packed["group_idx"]
    kept = idx.shape[1]
    group = packed["qweight"].shape[1] * 2 // kept
    return {"group": group, "kept": kept, "dtype": dtype_name(packed["scales"].dtype)}


def spec_params(quant, in_features: int) -> dict:
    """Parameters ``check`` takes for a recipe's ``QuantSpec`` (group 0 = one group per row)."""
    return {"group": quant.group or in_features, "bits": quant.bits}

FORMAT = FORMATS.add("group_sparse_int4", Format("group_sparse_int4", tensor_specs, pack, unpack, matmul_ref, check,
                                                 params, kernel="group_sparse_int4", spec_params=spec_params))
