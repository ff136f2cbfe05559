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
    def __init__(self, module: str, callback):
        self.module, self.callback = module, callback

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.module:
            return None
        sys.meta_path.remove(self)  # once only; the real finders locate the module
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader, self.callback)
        return spec


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
