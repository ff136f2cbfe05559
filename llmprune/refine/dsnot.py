"""DSnoT — Dynamic Sparse No Training (Zhang et al., ICLR 2024, arXiv:2310.08915): prune-and-grow mask refinement.

Why: a one-shot mask (magnitude, Wanda, SparseGPT) leaves, in every output row i, an *expected reconstruction error*
e_i = E[dense output − sparse output] = Σ_j (W_ij − Ŵ_ij)·E[x_j] (the paper's E[ε], Sec. 3.2). DSnoT shrinks it with
no backpropagation and no weight update: each cycle swaps one pruned weight back in and one kept weight out, so the
sparsity and the pattern stay exactly as they were.

Rules, per row, all rows in parallel (reference ``lib/prune.py::prune_DSnoT``):

- grow r = argmax over pruned r of sign(e)·W_ir·E[x_r] / Var[x_r]^p (the reduction reviving r brings, discounted by
  the input variance; p = ``pow_of_var_growing`` = 1);
- prune, unstructured: the kept weight of least Wanda importance |W_ij|·‖x_j‖ among those with
  sign(W_ij·E[x_j]) = −sign(e) (removing it also moves e towards zero); N:M: the kept weight of least Wanda
  importance inside r's M-group (the swap stays in the group);
- a row stops for good at the first rejected swap: |e| at or below ``update_threshold`` (the reference compares
  *sums*, i.e. seqlen·|e|, with it, so we multiply by ``calib_seqlen``), or, with the sign check (N:M by default,
  as the reference), a swap that would flip the sign of e; and after ``max_cycles`` cycles in all.

Both candidate lists are sorted once and walked with a pointer, as in the reference: O(in·log in) per row once and
O(rows) per cycle. A weight revived by a swap is never pruned again and a weight pruned by a swap never revived.

Deviations (see also ``docs``/README):

- The monotone rule (ours, ``monotone_nm`` / ``monotone_unstructured``, both on by default) also rejects a swap
  that would leave |e| larger than before. The reference accepts such swaps in two places: N:M prunes the least
  important weight of the group whatever its sign, and unstructured without the sign check can overshoot past zero.
  On SmolLM2-135M (README, DSnoT) the reference rules lost at every unstructured level, and at N:M won 4 of 8 cases
  by 0.2-8% but lost the others by up to 55% (Wanda + DSnoT on every Linear at 2:4). Both ``False`` reproduce the
  reference rules.
- Statistics are running means over tokens (docs/CONTRACTS.md), so E[x] replaces the reference's Σx/nsamples; the
  growing ranking is scale-free, and ``calib_seqlen`` restores the scale the threshold was tuned for. The variance is
  the total variance over all tokens; the reference averages per-sequence variances.
- The pruning importance is always Wanda's (|Ŵ|·‖x‖, with the base method's possibly updated Ŵ); the reference's
  N:M path ranks by the base method's own score (|W| for magnitude, w²/[H⁻¹]²_jj for SparseGPT).
- When a row runs out of candidates of the sign it needs (or, N:M, the group of r has no prunable weight left), the
  reference's pointer walks on into wrong-sign or already-used entries; we stop the row (N:M: skip that r).
- SparseGPT's updated kept weights are kept as they are; a revived weight comes back at its dense value (the
  reference uses SparseGPT's mask only, on the dense weights).
- Variances are clamped at 1e-12 (a constant feature) so the growing score stays finite; ties go to the lower index.
"""
from __future__ import annotations

import math

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import UserInputError
from ..masks import PatternViolation
from ..recipe import NM, Groups, Recipe, Sparsity
from ..types import Pruned, Stats
from . import REFINERS

_MLP_PARTS = frozenset({"mlp", "feed_forward", "ffn", "block_sparse_moe", "experts"})
_MLP_LEAVES = frozenset({"gate_proj", "up_proj", "down_proj", "fc1", "fc2", "c_fc", "dense_h_to_4h",
                         "dense_4h_to_h", "w1", "w2", "w3"})
_VAR_FLOOR = 1e-12


def dsnot_applies(module_name: str, skip_mlp: bool) -> bool:
    """Whether DSnoT refines this Linear. The reference skips MLP Linears by default (``--skip_layer mlp``), refining
    attention projections only; ``skip_mlp=False`` refines every Linear."""
    if not skip_mlp:
        return True
    parts = module_name.split(".")
    return not (_MLP_PARTS.intersection(parts[:-1]) or parts[-1] in _MLP_LEAVES)


def _applies(module_name: str, options: dict) -> bool:
    return dsnot_applies(module_name, bool(options.get("dsnot_skip_mlp", True)))


def check_recipe(recipe: Recipe) -> None:
    """One-line errors for recipes whose pattern DSnoT cannot keep (called before any work starts)."""
    if isinstance(recipe.sparsity, Groups) or any(isinstance(s, Groups) for _, s in recipe.overrides):
        raise UserInputError("--refine dsnot swaps single weights and cannot keep group sparsity; "
                             "use an unstructured fraction or N:M, or drop --refine")
    if recipe.sparsity is None and not recipe.overrides:
        raise UserInputError("--refine dsnot refines a pruning mask; give --sparsity (e.g. 0.5 or 2:4)")
    if recipe.quant is not None and recipe.method == "sparsegpt" and recipe.quant.method == "gptq":
        raise UserInputError("--refine dsnot cannot refine sparsegpt+gptq, which prunes and quantizes jointly; "
                             "use --quantizer rtn, another --method, or drop --refine")
    options = dict(recipe.options)
    if options.get("max_cycles", 0) < 0:
        raise UserInputError(f"--option max_cycles={options['max_cycles']}: DSnoT needs a count >= 0 (0 keeps the "
                             f"mask as it is)")
    for key in ("update_threshold", "pow_of_var_growing"):
        if key in options and not (math.isfinite(options[key]) and options[key] >= 0):
            raise UserInputError(f"--option {key}={options[key]}: DSnoT needs a finite number >= 0")


@dataclass
class Refinement:
    """The refined mask and, per row, the expected error e (float64) before and after; ``swaps`` per row."""

    mask: Tensor
    errors_before: Tensor
    errors_after: Tensor
    swaps: Tensor


class _Queue:
    """Per-row candidate columns, best first: the reference's sorted index list walked by a pointer."""

    def __init__(self, key: Tensor, valid: Tensor):
        key = key.masked_fill(~valid, float("inf"))
        self.order = torch.sort(key, dim=1, stable=True).indices
        self.count = valid.sum(1)
        self.ptr = torch.zeros_like(self.count)

    def head(self) -> tuple[Tensor, Tensor]:
        """(column, present) of each row's current best candidate."""
        at = self.ptr.clamp(max=self.order.shape[1] - 1).unsqueeze(1)
        return self.order.gather(1, at).squeeze(1), self.ptr < self.count

    def pop_(self, rows: Tensor) -> None:
        self.ptr += rows.long()


def _pick(positive: Tensor, for_pos: _Queue, for_neg: _Queue) -> tuple[Tensor, Tensor]:
    """Each row's head from the queue matching the sign of its error (e > 0 → ``for_pos``)."""
    col_p, ok_p = for_pos.head()
    col_n, ok_n = for_neg.head()
    return torch.where(positive, col_p, col_n), torch.where(positive, ok_p, ok_n)


def refine_mask(weight_dense: Tensor, weight_sparse: Tensor, keep: Tensor, stats: Stats, sparsity: Sparsity, *,
                max_cycles: int = 50, update_threshold: float = 0.1, pow_of_var_growing: float = 1.0,
                sign_check: bool = True, monotone: bool = True, calib_seqlen: int = 2048) -> Refinement:
    """The DSnoT loop over all rows at once (see the module docstring for the rules); returns the new keep-mask."""
    W, W_hat, keep = weight_dense.float(), weight_sparse.float(), keep.bool().clone()
    mean, var = stats.input_mean.float().reshape(1, -1), stats.input_var.float().reshape(1, -1)
    D_grow = W * mean  # reviving r lowers e by D_grow[i, r]
    D_prune = W_hat * mean  # pruning j raises e by D_prune[i, j]
    e = ((W - W_hat) * mean).double().sum(1)
    before = e.clone()
    score = D_grow / var.clamp_min(_VAR_FLOOR) ** pow_of_var_growing if pow_of_var_growing else D_grow
    pruned0 = ~keep
    grow_pos, grow_neg = _Queue(-score, pruned0 & (score > 0)), _Queue(score, pruned0 & (score < 0))
    importance = W_hat.abs() * stats.input_sq_norms.float().clamp_min(0).sqrt().reshape(1, -1)
    nm = sparsity if isinstance(sparsity, NM) else None
    if nm is None:
        prune_pos = _Queue(importance, keep & (D_prune < 0))  # for e > 0: removing j must lower e
        prune_neg = _Queue(importance, keep & (D_prune > 0))
    prunable = keep.clone()  # initially kept and not yet pruned
    sign0 = torch.sign(e)
    active = torch.ones_like(e, dtype=torch.bool)
    swaps = torch.zeros_like(e, dtype=torch.long)
    rows = torch.arange(W.shape[0], device=W.device)
    for _ in range(max_cycles):
        active &= e.abs() * calib_seqlen > update_threshold
        positive = e > 0
        grow, has_grow = _pick(positive, grow_pos, grow_neg)
        active &= has_grow
        if nm is None:
            prune, has_prune = _pick(positive, prune_pos, prune_neg)
            active &= has_prune
        else:
            prune, has_prune = _prune_in_group(grow, prunable, importance, nm.m)
        if not bool(active.any()):
            break
        after = e - D_grow[rows, grow].double() + D_prune[rows, prune].double()
        accept = active & has_prune
        if sign_check:
            accept &= torch.sign(after) == sign0
        if monotone:
            accept &= after.abs() < e.abs()
        active &= accept | ~has_prune  # a rejected swap stops the row; N:M skips an r whose group is used up
        r = rows[accept]
        keep[r, grow[accept]] = True
        keep[r, prune[accept]] = False
        prunable[r, prune[accept]] = False
        e = torch.where(accept, after, e)
        swaps += accept.long()
        grow_pos.pop_(active & positive)  # rows still active used their grow candidate
        grow_neg.pop_(active & ~positive)
        if nm is None:
            prune_pos.pop_(accept & positive)
            prune_neg.pop_(accept & ~positive)
    return Refinement(keep, before, e, swaps)


def _prune_in_group(grow: Tensor, prunable: Tensor, importance: Tensor, m: int) -> tuple[Tensor, Tensor]:
    """N:M: the prunable weight of least importance in the M-group of each row's grow column."""
    start = (grow - grow % m).unsqueeze(1)
    cols = start + torch.arange(m, device=grow.device).unsqueeze(0)
    key = importance.gather(1, cols).masked_fill(~prunable.gather(1, cols), float("inf"))
    best, at = key.min(1)
    return cols.gather(1, at.unsqueeze(1)).squeeze(1), torch.isfinite(best)


def _check_kept_pattern(before: Tensor, after: Tensor, sparsity: Sparsity) -> None:
    """Product guarantee (raises, never asserts): same count per row, and exact N:M."""
    if not torch.equal(before.sum(1), after.sum(1)):
        raise PatternViolation("DSnoT changed a row's number of kept weights")
    if isinstance(sparsity, NM):
        rows, cols = after.shape
        kept = after.reshape(rows, cols // sparsity.m, sparsity.m).sum(-1)
        if not bool((kept == sparsity.n).all()):
            raise PatternViolation(f"DSnoT broke the {sparsity} pattern")


# keeps="row": DSnoT keeps per-row counts (so per-layer), not SparseGPT's per-block ones
@REFINERS.register("dsnot", needs=frozenset({"input_mean", "input_var", "input_sq_norms"}), applies=_applies,
                   check=check_recipe, keeps="row", options={"dsnot_skip_mlp": True})
def dsnot(weight_dense: Tensor, pruned: Pruned, stats: Stats, sparsity: Sparsity, *, max_cycles: int = 50,
          update_threshold: float = 0.1, pow_of_var_growing: float = 1.0, sign_check_nm: bool = True,
          sign_check_unstructured: bool = False, monotone_nm: bool = True, monotone_unstructured: bool = True,
          calib_seqlen: int = 2048) -> Pruned:
    """Refine ``pruned``'s mask with DSnoT; same sparsity and pattern. Hyperparameters are the reference's defaults:
    50 cycles, threshold 0.1 on seqlen-scaled sums (``calib_seqlen``: the calibration window length), variance power
    1, sign check for N:M only (the reference's ``--without_same_sign`` is a ``type=bool`` flag, always true, so its
    unstructured path never checks the sign). The monotone rules are ours (module docstring, Deviations)."""
    if isinstance(sparsity, Groups):
        raise UserInputError("--refine dsnot swaps single weights and cannot keep group sparsity; "
                             "use an unstructured fraction or N:M, or drop --refine")
    if stats.input_mean is None or stats.input_var is None or stats.input_sq_norms is None:
        raise ValueError("dsnot needs input_mean, input_var and input_sq_norms statistics")
    if max_cycles < 0 or calib_seqlen < 1:
        raise UserInputError("dsnot: max_cycles must be >= 0 and calib_seqlen >= 1")
    nm = isinstance(sparsity, NM)
    result = refine_mask(weight_dense, pruned.weight, pruned.mask, stats, sparsity, max_cycles=max_cycles,
                         update_threshold=update_threshold, pow_of_var_growing=pow_of_var_growing,
                         sign_check=sign_check_nm if nm else sign_check_unstructured,
                         monotone=monotone_nm if nm else monotone_unstructured, calib_seqlen=calib_seqlen)
    _check_kept_pattern(pruned.mask.bool(), result.mask, sparsity)
    revived = result.mask & ~pruned.mask.bool()
    weight = torch.where(revived, weight_dense.float(), pruned.weight.float()) * result.mask
    info = {**pruned.info, "dsnot_swaps": int(result.swaps.sum()),
            "dsnot_abs_err_before": float(result.errors_before.abs().mean()),
            "dsnot_abs_err_after": float(result.errors_after.abs().mean())}
    return Pruned(weight.to(pruned.weight.dtype), result.mask, info)
