"""Cheap change detection for tensors that derived state (kernel launch plans, kept maps) is cached against.

Why not hash the data: a decode step asks once per layer, so the test must cost well under a microsecond per tensor.
A tensor's identity, its version counter (bumped by every in-place write) and its data pointer (``t.data = other``
swaps the storage without counting a version) tell a replaced or modified tensor from an unchanged one. Inference
tensors (made under ``torch.inference_mode``) keep no version counter: for them only replacement and storage swaps
are seen, so modify them in place only where the module is rebuilt afterwards.
"""
from __future__ import annotations

from torch import Tensor


def version(t: Tensor) -> int:
    """``t``'s version counter, or -1 for an inference tensor (which has none)."""
    return -1 if t.is_inference() else t._version


def state(t: Tensor) -> tuple[int, int]:
    """(version, data pointer): changes whenever ``t``'s values may have, short of a write through another alias
    made with ``.data``."""
    return version(t), t.data_ptr()


def fingerprint(tensors) -> tuple:
    """(identity, version, data pointer) of each tensor in ``tensors`` (None entries skipped): equal while none of
    them was replaced or written, as long as the caller keeps them alive (ids are unique only among live objects)."""
    try:
        return tuple((id(t), t._version, t.data_ptr()) for t in tensors if t is not None)
    except RuntimeError:  # an inference tensor among them (the common case skips the per-tensor check)
        return tuple((id(t), *state(t)) for t in tensors if t is not None)
