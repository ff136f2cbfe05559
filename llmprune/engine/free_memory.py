"""Give memory freed by a finished layer back to the operating system.

Why: glibc's allocator keeps freed blocks of up to 32 MiB in its heap for reuse instead of unmapping them (its mmap
threshold grows with each large free), and a layer's temporaries (Hessians, weight copies, masks) are such blocks.
Measured on three TinyLlama-1.1B-shaped layers packed as they finish: 0.52 GiB more anonymous memory after the run
than the 0.13 GiB its live tensors hold; ``malloc_trim(0)`` returned all but 0.12 GiB of it. Elsewhere (macOS,
musl, Windows) this does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # no libc to load, or one without malloc_trim (musl)
        return None


def release_freed_memory() -> bool:
    """Return the allocator's free heap pages to the system; True where glibc did it."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
