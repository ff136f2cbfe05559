"""Pruning methods: one file each, registered in ``METHODS`` with the statistics they need.

A method is ``fn(weight[out, in] float32, stats: Stats, sparsity: Sparsity, **options) -> Pruned``; it sees tensors
only. Adding a method = one file + one import line below.
"""
from ..registry import Registry

METHODS = Registry("method")

from . import magnitude, wanda, sparsegpt, gqsa  # noqa: E402,F401  (registration)
