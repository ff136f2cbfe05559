"""The top-level API (``llmprune.__all__``) survives its own use: importing a submodule sets an attribute of the same
name on the package, which would shadow a public function named like it (``llmprune.formats()`` once did, after its
first call imported ``llmprune.formats``)."""
from __future__ import annotations

import importlib
import pkgutil

import llmprune


def test_public_names_are_not_shadowed_by_submodules():
    public = {name: getattr(llmprune, name) for name in llmprune.__all__}
    for info in pkgutil.iter_modules(llmprune.__path__):
        if info.name != "__main__":  # runs the CLI
            importlib.import_module(f"llmprune.{info.name}")
    shadowed = [name for name, obj in public.items() if getattr(llmprune, name) is not obj]
    assert not shadowed
    assert llmprune.format_names() == llmprune.format_names() and "sparse24_int4" in llmprune.format_names()
    assert {"magnitude", "wanda", "sparsegpt"} <= set(llmprune.method_names())


def test_compress_without_calibration_says_how_from_python_too():
    """The library caller has no --calib flag: the message also shows the call that gives the windows."""
    import pytest

    from llmprune import Recipe, compress_, parse_sparsity
    from llmprune.errors import UserInputError
    from tests.tiny_models import tiny_model

    model, _ = tiny_model("llama")
    with pytest.raises(UserInputError, match=r"give --calib \(from Python: .*calibration_windows"):
        compress_(model, Recipe(method="wanda", sparsity=parse_sparsity("0.5")))
