"""A quantize-only run over a layer pruned earlier keeps its zeros.

Why: GPTQ spreads each column's rounding error over the columns after it, pruned weights included, so quantizing a
pruned checkpoint on its own made it dense again without a word (a Wanda 2:4 layer of a tiny Llama: 50% -> 44%
zeros) and no sparse format could hold it. A layer whose weights are at least ``EARLIER_PRUNING`` exact zeros is taken
as pruned: its zeros become the quantizer's mask, as a ``--sparsity`` run's mask does. Dense checkpoints are far
below that (SmolLM2-135M, dequantized from its GGUF: at most 0.07% per layer). SpQR quantizes dense weights only
(its outliers may land anywhere); its layers are counted and the run warns."""
from __future__ import annotations

from torch import Tensor

EARLIER_PRUNING = 0.05


def earlier_mask(weight: Tensor) -> Tensor | None:
    """The keep-mask of a layer pruned earlier (its non-zero weights), or None for a dense one."""
    keep = weight != 0
    return keep if 1 - float(keep.float().mean()) >= EARLIER_PRUNING else None


def filled_warning(names: list[str], quantizer: str) -> str:
    return (f"{len(names)} Linear layers (e.g. {names[0]}) were at least {EARLIER_PRUNING:.0%} zeros (pruned "
            f"earlier?) and --quantizer {quantizer} quantizes dense weights, filling them in; gptq and rtn keep "
            f"such zeros")
