"""SpQR: small-group quantization with quantized (bilevel) statistics and 16-bit outliers, GPTQ-compensated.

Source: Dettmers et al. 2023, "SpQR: A Sparse-Quantized Representation for Near-Lossless LLM Weight Compression"
(arXiv:2306.03078), Alg. 1 and Sec. 4.1-4.2, with the defaults of its reference code (``spqr_engine.py``,
``quant_groups.py``; README recipe ``--groupsize 16 --qq_scale_bits 3 --qq_zero_bits 3 --qq_groupsize 16
--outlier_threshold 0.2 --permutation_order act_order --percdamp 1e0``).

Per group of g1 input columns (default 16), at its first column, on the current (compensated) weights:
1. Leave-one-out sensitivity: for every weight, the drop of the group's Hessian-weighted squared error
   Σ ((w - q(w)) / [U]_jj)² when that weight is left out of the min-max fit (U: upper Cholesky factor of H⁻¹).
   Weights whose drop exceeds the threshold are replaced by the row mean of the others for the fit.
2. Min-max grid without the clamp to 0 and with an unrounded zero (SpQR's quantizer); the g1-group's per-row
   scales and zeros are then quantized to ``stat_bits`` bits in groups of g2 = ``stat_group`` consecutive rows
   (second-level min-max grids, unrounded zero, stored in 16 bits).
Per column: a weight whose error ((w - q) / [U]_jj)² exceeds the threshold becomes an outlier, kept in 16 bits; the
others are re-quantized with the outliers zeroed, and the column's error is spread to the right (GPTQ). The
threshold is ``outlier_threshold × mean_j(var_rows(W[:, j]) / [U]_jj²)``, as the reference scales it.

Layout of the returned ``QuantizedWeight`` (G = in/g1, R = out/g2; everything in original column order):
    codes [out, in] uint8 — codes of the non-outlier weights (an outlier's code is that of 0; it is overwritten).
    scales, zeros [out, G] float32 — the *dequantized* first-level statistics, exactly
        scales = (extra["scale_codes"] - extra["scale_zero"][r // g2]) * extra["scale_scale"][r // g2]
        zeros  = (extra["zero_codes"]  - extra["zero_zero"][r // g2])  * extra["zero_scale"][r // g2]
        computed in float32 from the 16-bit second-level values, so ``dequantize()`` and ``formats/spqr`` agree.
    outliers: CSR (row_ptr [out+1] int64, col_idx [nnz] int32 ascending per row, values [nnz] 16-bit).
    extra: scale_codes, zero_codes [out, G] uint8 (stat_bits-bit codes); scale_scale, scale_zero, zero_scale,
        zero_zero [R, G] 16-bit; stat_bits, stat_group (ints).
    16-bit: the type the checkpoint stores them in (``scale_dtype``: float16, or bfloat16 for a bfloat16 model), so
    the saved model is the one compressed.

Deviation: the reference permutes all columns by act-order and forms groups over the permuted order (and stores the
permutation); we use ``gptq.act_order_perm``, which orders whole groups and the columns inside each group, so groups
stay contiguous in the original order and no permutation is stored. The second-level scale and zero are rounded to
16 bits before the codes are chosen (the reference keeps them in the model's dtype), and a second-level group of
equal values is stored exactly (scale 1, zero = -value) instead of on the reference's [-1, 1] range. A first-level
group whose range is below ``1 / MIN_RANGE_RATIO`` of its largest magnitude (nearly constant, typically after its
likely outliers were replaced by the mean) gets the scale ``amax / MIN_RANGE_RATIO``: without a floor its unclamped
zero point ``-min / scale`` runs into the millions, overflows 16-bit second-level statistics and turns the
layer into NaN (seen on SmolLM2's o_proj at 2 bits); the reference has no floor. An outlier's error passed on to
the columns to the right is that of its stored 16-bit value (the reference passes on none: it keeps the exact value
during the sweep and rounds it only when saving). Damping is added after dead inputs' diagonal entries are set to 1
(the reference damps first; the same unless an input is dead, and then within 1e-6 in a measured case).
"""
from __future__ import annotations

import inspect
import math

import torch
from torch import Tensor

from .. import obs
from ..errors import UserInputError
from ..recipe import QuantSpec
from ..types import QuantizedWeight, Stats
from . import QUANTIZERS
from .bits_per_param import bits_per_param
from ..options import flag, number
from .gptq import act_order_perm, unpermute
from .uniform import check_quant_shape, dequantize, effective_group, find_params, maxq, quantize_codes, stored_scale

MIN_RANGE_RATIO = 256.0  # first-level scale >= amax / 256, so zero points stay below ~256 (module docstring)
SETTINGS = ("outlier_threshold", "stat_bits", "stat_group", "spqr_damp", "act_order")  # spqr()'s --option names


def quantize_stat(x: Tensor, stat_bits: int, stat_group: int,
                  dtype: torch.dtype = torch.float16) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Second level: ``x [rows]`` in groups of ``stat_group`` rows -> (codes [rows], scale [R], zero [R] in ``dtype``
    (the 16-bit type they are stored in), dequantized x [rows] float32)."""
    groups = x.reshape(-1, stat_group).float()
    xmin, xmax = groups.min(1).values, groups.max(1).values
    flat = xmin == xmax
    scale = torch.where(flat, torch.ones_like(xmin), (xmax - xmin) / maxq(stat_bits))
    zero = torch.where(flat, -xmin, -xmin / scale)
    scale, zero = stored_scale(scale, dtype), zero.to(dtype).float()
    codes = quantize_codes(groups, scale.unsqueeze(1), zero.unsqueeze(1), stat_bits, zero_inside=True)
    deq = dequantize(codes, scale.unsqueeze(1), zero.unsqueeze(1))
    return codes.reshape(-1), scale.to(dtype), zero.to(dtype), deq.reshape(-1)


def leave_one_out_gain(gw: Tensor, d: Tensor, bits: int) -> Tensor:
    """For each weight of ``gw [rows, g]``: how much the group's error Σ((w - q)/d)² drops when the grid is fitted
    without it and it is not quantized (SpQR's ``get_leave_one_out_error``)."""
    rows, g = gw.shape
    idx = torch.arange(g, device=gw.device)
    loo = idx[1:] - (idx.unsqueeze(1) >= idx[1:]).to(idx.dtype)  # [g, g-1]: the other columns of each left-out one
    data = gw[:, loo].reshape(rows * g, g - 1)
    s, z = find_params(data, bits, clamp_zero=False, round_zero=False)
    s, z = s.unsqueeze(1), z.unsqueeze(1)
    rec = dequantize(quantize_codes(data, s, z, bits, zero_inside=True), s, z)
    loo_err = ((rec - data).reshape(rows, g, g - 1) / d[loo]).square().sum(-1)
    s0, z0 = find_params(gw, bits, clamp_zero=False, round_zero=False)
    s0, z0 = s0.unsqueeze(1), z0.unsqueeze(1)
    base = (dequantize(quantize_codes(gw, s0, z0, bits, zero_inside=True), s0, z0) - gw) / d
    return base.square().sum(1, keepdim=True) - loo_err


class SpqrColumns:
    """``obs.ColumnQuantizer`` for SpQR: fits each group's bilevel grid, picks outliers, records everything."""

    def __init__(self, W: Tensor, d: Tensor, bits: int, group: int, stat_bits: int, stat_group: int,
                 threshold: float, stat_dtype: torch.dtype = torch.float16):
        rows, cols = W.shape
        n_groups, blocks = cols // group, rows // stat_group
        self.d, self.bits, self.group, self.threshold = d, bits, group, threshold
        self.stat_bits, self.stat_group, self.stat_dtype = stat_bits, stat_group, stat_dtype
        self.codes = torch.zeros_like(W)
        self.outlier = torch.zeros_like(W, dtype=torch.bool)
        self.stats = {k: W.new_zeros(rows, n_groups) for k in ("scales", "zeros", "scale_codes", "zero_codes")}
        self.stats.update({k: torch.zeros(blocks, n_groups, dtype=stat_dtype, device=W.device)
                           for k in ("scale_scale", "scale_zero", "zero_scale", "zero_zero")})

    def _fit(self, k: int, gw: Tensor, d: Tensor) -> None:
        if math.isfinite(self.threshold):
            likely = leave_one_out_gain(gw, d, self.bits) > self.threshold
            normal = (~likely).to(gw.dtype)
            mean = (gw * normal).sum(1, keepdim=True) / normal.sum(1, keepdim=True).clamp_min(1)
            gw = torch.where(likely, mean, gw)
        scale, _ = find_params(gw, self.bits, clamp_zero=False, round_zero=False)
        scale = torch.maximum(scale, gw.abs().amax(1) / MIN_RANGE_RATIO)  # the floor of the module docstring
        zero = -gw.min(1).values / scale  # the grid still starts at the group's minimum
        for name, value in (("scale", scale), ("zero", zero)):
            codes, s2, z2, deq = quantize_stat(value, self.stat_bits, self.stat_group, self.stat_dtype)
            self.stats[f"{name}s"][:, k], self.stats[f"{name}_codes"][:, k] = deq.to(gw.dtype), codes.to(gw.dtype)
            self.stats[f"{name}_scale"][:, k], self.stats[f"{name}_zero"][:, k] = s2, z2

    def _round(self, w: Tensor, scale: Tensor, zero: Tensor) -> tuple[Tensor, Tensor]:
        codes = quantize_codes(w, scale, zero, self.bits, zero_inside=True)
        return codes, dequantize(codes, scale, zero)

    def __call__(self, j: int, w: Tensor, ahead: Tensor) -> Tensor:
        k = j // self.group
        if j % self.group == 0:
            self._fit(k, ahead[:, : self.group], self.d[j : j + self.group])
        scale, zero = self.stats["scales"][:, k], self.stats["zeros"][:, k]
        codes, q = self._round(w, scale, zero)
        if math.isfinite(self.threshold):
            out = ((w - q) / self.d[j]).square() > self.threshold
            codes, q = self._round(w * ~out, scale, zero)
            q = torch.where(out, w.to(self.stat_dtype).to(w.dtype), q)
            self.outlier[:, j] = out
        self.codes[:, j] = codes
        return q


def _csr(outlier: Tensor, weight: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor] | None:
    rows, cols = outlier.nonzero(as_tuple=True)  # row-major: columns ascending within each row
    row_ptr = torch.zeros(outlier.shape[0] + 1, dtype=torch.int64, device=outlier.device)
    row_ptr[1:] = torch.cumsum(outlier.sum(1), 0)
    return row_ptr, cols.to(torch.int32), weight[rows, cols].to(dtype)


def settings_of(options: dict, given: dict | None = None) -> dict:
    """SpQR's settings, parsed strictly: ``given`` (default: ``spqr``'s own defaults), overridden by the keys of
    ``options`` SpQR reads. The quantizer, the checks before calibration and the model card resolve them here."""
    if given is None:
        params = inspect.signature(spqr).parameters
        given = {k: params[k].default for k in SETTINGS}
    opts = {**given, **{k: v for k, v in options.items() if k in SETTINGS}}
    kinds = {"outlier_threshold": float, "spqr_damp": float, "stat_bits": int, "stat_group": int}
    numbers = {k: number(opts[k], k, kind, "spqr") for k, kind in kinds.items()}
    return {**numbers, "act_order": flag(opts["act_order"], "act_order")}


def _settings(spec: QuantSpec, rows: int, given: dict | None, name: str) -> dict:
    """Resolve options (``spec.options`` win over ``given``) and refuse impossible ones, one line each (the group
    size is ``uniform.check_quant_shape``'s to check, which every caller runs first)."""
    opts = settings_of(dict(spec.options), given)
    where = f"{name}: " if name else ""
    if spec.symmetric:
        raise UserInputError(f"{where}--quant {spec}: SpQR grids are asymmetric; drop the 's' (e.g. --quant w3g16)")
    if not 1 <= opts["stat_bits"] <= 8:
        raise UserInputError(f"{where}SpQR stat_bits={opts['stat_bits']} must be between 1 and 8 (the paper uses 3)")
    if opts["stat_group"] < 1 or rows % opts["stat_group"]:
        raise UserInputError(f"{where}SpQR stat_group={opts['stat_group']} must divide the output dimension {rows}; "
                             f"set --option stat_group=N to a divisor (the paper uses 16) or exclude the layer")
    if not opts["outlier_threshold"] >= 0 or opts["spqr_damp"] <= 0:
        raise UserInputError(f"{where}SpQR outlier_threshold must be >= 0 (inf disables outliers) and spqr_damp > 0")
    return opts


def check_settings(spec: QuantSpec, rows: int, name: str = "") -> None:
    """``_settings``' refusals before calibration, for options given in ``spec`` (defaults: ``spqr``'s)."""
    _settings(spec, rows, None, name)


@QUANTIZERS.register("spqr", needs=frozenset({"hessian"}), takes_mask=False)
def spqr(weight: Tensor, stats: Stats, spec: QuantSpec, *, mask: Tensor | None = None, block: int = 128,
         outlier_threshold: float = 0.2, stat_bits: int = 3, stat_group: int = 16, spqr_damp: float = 1.0,
         act_order: bool = True, scale_dtype: torch.dtype | None = None,
         name: str = "") -> tuple[QuantizedWeight, dict]:
    """SpQR (see the module docstring). ``spec.group == 0`` means the paper's g1 = 16.

    Dampening is ``spqr_damp`` × mean(diag H), 1.0 as the reference (the recipe's ``--damp`` is GPTQ's and is not
    used here). ``outlier_threshold`` is relative (``inf`` turns outliers off).
    """
    rows, cols = weight.shape
    if mask is not None:
        raise UserInputError(f"{name or 'layer'}: the spqr quantizer does not take a sparsity mask; "
                             f"drop --sparsity or use --quantizer gptq")
    if stats is None or stats.hessian is None:
        raise UserInputError(f"{name or 'layer'}: SpQR needs the Hessian statistics; run with calibration data")
    check_quant_shape(cols, spec, name)
    given = {"outlier_threshold": outlier_threshold, "stat_bits": stat_bits, "stat_group": stat_group,
             "spqr_damp": spqr_damp, "act_order": act_order}
    opts = _settings(spec, rows, given, name)
    group = effective_group(spec, cols)
    W = weight.clone().to(torch.promote_types(weight.dtype, torch.float32))
    H = stats.hessian.clone().to(W.dtype)
    # SpQR's reference orders the columns by the raw diag(H), before dead inputs get a unit diagonal, so a dead
    # column (diag 0) goes last; GPTQ's reference, and our gptq.py, order after the patch.
    perm = act_order_perm(torch.diag(H), group) if opts["act_order"] else None
    obs.mask_dead_inputs_(H, W)
    if perm is not None:
        W, H = W[:, perm], H[perm][:, perm]
    Hinv, damp_used = obs.damped_inverse_cholesky(H, opts["spqr_damp"], name=name)
    d = torch.diag(Hinv)
    threshold = opts["outlier_threshold"] * float((W.var(dim=0) / d.square()).mean())
    stat_dtype = scale_dtype or torch.float16  # the 16-bit type the checkpoint stores (bfloat16 for bf16 models)
    columns = SpqrColumns(W, d, spec.bits, group, opts["stat_bits"], opts["stat_group"], threshold, stat_dtype)
    result = obs.sweep(W, Hinv, block=block, quantize=columns, group=group)
    per_col, per_group = [columns.codes, columns.outlier, result.weight], list(columns.stats.values())
    if perm is not None:
        per_col, per_group = unpermute(perm, group, per_col, per_group)
    codes, outlier, final = per_col
    st = dict(zip(columns.stats, per_group))
    extra = {"scale_codes": st["scale_codes"].to(torch.uint8), "zero_codes": st["zero_codes"].to(torch.uint8),
             **{k: st[k] for k in ("scale_scale", "scale_zero", "zero_scale", "zero_zero")},
             "stat_bits": opts["stat_bits"], "stat_group": opts["stat_group"]}
    outliers = _csr(outlier, final, stat_dtype) if bool(outlier.any()) else None
    qw = QuantizedWeight(codes.to(torch.uint8), st["scales"].float(), st["zeros"].float(), spec.bits, group,
                         False, outliers=outliers, extra=extra)
    fraction = float(outlier.float().mean())
    info = {"damp_used": damp_used, "obs_loss": float(result.loss.sum()), "act_order": opts["act_order"],
            "outlier_fraction": fraction, "outlier_threshold": opts["outlier_threshold"],
            "bits_per_param": bits_per_param(qw)}
    return qw, info
