"""``--quiet`` for libraries that offer no switch of their own: every tqdm bar created inside the block is disabled.

lm-eval 0.4 hands no ``disable_tqdm`` to its request building, compressed-tensors' "Compressing model" bar has no
option, and tqdm reads ``TQDM_DISABLE`` only once, when it is imported; so the block wraps ``tqdm.__init__`` (every
``tqdm.auto`` / ``tqdm.std`` subclass goes through it) and restores it afterwards.
"""
from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def no_progress_bars():
    from tqdm import std

    init = vars(std.tqdm)["__init__"]

    def silent_init(self, *args, **kwargs):
        kwargs["disable"] = True
        init.__get__(self, type(self))(*args, **kwargs)

    std.tqdm.__init__ = silent_init
    try:
        yield
    finally:
        std.tqdm.__init__ = init
