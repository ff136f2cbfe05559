"""Run a callback right after a module is imported, without importing it: how ``import llmprune`` (25 ms) teaches
transformers (seconds to import) about llmprune's packed checkpoints only once transformers' quantizer registry
exists, whichever of the two is imported first."""
from __future__ import annotations

import importlib.abc
import importlib.util
import sys


def call_after_import(module: str, callback) -> None:
    """``callback()`` now if ``module`` is already imported, else right after its import finishes."""
    if module in sys.modules:
        callback()
    else:
        sys.meta_path.insert(0, _Finder(module, callback))


class _Finder(importlib.abc.MetaPathFinder):
    """Wraps the module's real spec; stays on ``sys.meta_path`` until the module is executed (a bare
    ``importlib.util.find_spec`` imports nothing, so it must not use up the hook)."""

    def __init__(self, module: str, callback):
        self.module, self.callback, self._busy = module, callback, False

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.module or self._busy:
            return None
        self._busy = True  # the real finders locate the module; this one steps aside meanwhile
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._busy = False
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader, self._done)
        return spec

    def _done(self):
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        self.callback()


class _Loader(importlib.abc.Loader):
    """The module's own loader, with the callback after ``exec_module``; everything else is delegated."""

    def __init__(self, loader, callback):
        self._loader, self._callback = loader, callback

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        module.__loader__ = self._loader
        self._callback()

    def __getattr__(self, name):
        return getattr(self._loader, name)
