"""Cheap change detection for tensors that derived state (kernel launch plans, kept maps) is cached against.

Why not hash the data: a decode step asks once per layer, so the test must cost well under a microsecond per tensor.
A tensor's identity plus its version counter (bumped by every in-place write) tells a replaced or modified tensor
from an unchanged one. Inference tensors (made under ``torch.inference_mode``) keep no version counter: for them
only replacement is seen, so modify them in place only where the module is rebuilt afterwards.
"""
from __future__ import annotations

from torch import Tensor


def version(t: Tensor) -> int:
    """``t``'s version counter, or -1 for an inference tensor (which has none)."""
    return -1 if t.is_inference() else t._version


def fingerprint(tensors) -> tuple:
    """(identity, version) of each tensor in ``tensors`` (None entries skipped): equal while none of them was
    replaced or written in place, as long as the caller keeps them alive (ids are unique only among live objects)."""
    try:
        return tuple((id(t), t._version) for t in tensors if t is not None)
    except RuntimeError:  # an inference tensor among them (the common case skips the per-tensor check)
        return tuple((id(t), version(t)) for t in tensors if t is not None)
