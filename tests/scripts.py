"""The benchmark scripts under ``benchmarks/`` are files, not package modules: tests load them by path."""
from __future__ import annotations

import importlib.util
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str, module_name: str):
    """``benchmarks/<name>.py`` as a module called ``module_name`` (two test files may hold their own copy)."""
    spec = importlib.util.spec_from_file_location(module_name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
