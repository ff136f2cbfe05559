"""``call_after_import``: the callback runs once, right after the module's import, and not before; a bare
``find_spec`` probe does not use the hook up; an already imported module gets the callback at once."""
from __future__ import annotations

import importlib
import importlib.util
import sys

from llmprune.after_import import call_after_import


def _module(tmp_path, monkeypatch, name: str):
    (tmp_path / f"{name}.py").write_text("VALUE = 41\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)


def test_callback_after_import_once(tmp_path, monkeypatch):
    _module(tmp_path, monkeypatch, "llmprune_probe_a")
    seen = []
    call_after_import("llmprune_probe_a", lambda: seen.append(sys.modules["llmprune_probe_a"].VALUE))
    assert seen == []
    assert importlib.util.find_spec("llmprune_probe_a") is not None and seen == []  # a probe imports nothing
    module = importlib.import_module("llmprune_probe_a")
    assert seen == [41] and module.VALUE == 41 and type(module.__loader__).__name__ != "_Loader"
    importlib.reload(module)
    assert seen == [41] and not any(getattr(f, "module", None) == "llmprune_probe_a" for f in sys.meta_path)


def test_callback_now_when_already_imported(tmp_path, monkeypatch):
    _module(tmp_path, monkeypatch, "llmprune_probe_b")
    importlib.import_module("llmprune_probe_b")
    seen = []
    call_after_import("llmprune_probe_b", lambda: seen.append(True))
    assert seen == [True]
