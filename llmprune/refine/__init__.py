"""Refiners: training-free steps that improve a pruned mask after any base method, registered in ``REFINERS``.

A refiner is ``fn(weight_dense[out, in] float32, pruned: Pruned, stats: Stats, sparsity: Sparsity, **options) ->
Pruned``; it keeps the pattern it is given (exact per-row counts, exact N:M). Metadata on each entry:

- ``needs``: the Stats fields it reads (the engine computes only those);
- ``applies(module_name, options) -> bool``: whether it refines that module (DSnoT's reference skips MLPs);
- ``check(recipe)``: raises a one-line ``UserInputError`` for a recipe whose pattern it cannot keep;
- ``keeps``: the unstructured comparison group whose counts it preserves ('row': per row, hence per layer too; a
  SparseGPT mask's per-block counts are not preserved, so verify a refined SparseGPT mask per layer).

Adding a refiner = one file + one import line below.
"""
from ..registry import Registry

REFINERS = Registry("refiner")

from . import dsnot  # noqa: E402,F401  (registration)
