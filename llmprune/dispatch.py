"""Choose the matmul implementation of a packed layer: a Triton kernel on CUDA when one exists, the format's plain
torch ``matmul_ref`` anywhere else.

``LLMPRUNE_KERNEL`` (read through ``settings.kernel_mode``): ``auto`` (default) takes the kernel when the input is on
CUDA, Triton is usable and ``llmprune.kernels.<format>`` provides ``<format>_matmul`` (and, when defined, its
``supports(x, packed)`` accepts the call); ``reference`` always takes ``matmul_ref``; ``triton`` demands the kernel and
fails with a one-line error naming the reason otherwise. The path taken is recorded on the module
(``kernel_path``, ``kernel_reason``) so benchmarks and reports print it; a CUDA fallback also warns once per reason.
Kernels are imported lazily and only for CUDA inputs, so CPU runs never import triton.
"""
from __future__ import annotations

import functools
import importlib
import warnings
from typing import Callable

from torch import Tensor, nn

from .errors import UserInputError
from .formats import Format, get_format
from .settings import kernel_mode

MODES = ("auto", "reference", "triton")
_warned: set[tuple[str, str]] = set()


def _kernel(fmt: Format, x: Tensor, packed: dict[str, Tensor]) -> tuple[Callable | None, str]:
    """The Triton launcher for this call, or None and the reason it cannot be used."""
    if fmt.kernel is None:
        return None, f"format {fmt.name} has no kernel"
    if not x.is_cuda:
        return None, f"input on {x.device.type}"
    launcher, supports, reason = _launcher(fmt.kernel)
    if launcher is not None and supports is not None and not supports(x, packed):
        return None, f"{fmt.kernel} kernel does not support this input (dtype {x.dtype}, shape {tuple(x.shape)})"
    return launcher, reason


@functools.lru_cache(maxsize=None)
def _launcher(kernel: str) -> tuple[Callable | None, Callable | None, str]:
    """(``<kernel>_matmul``, its ``supports`` pre-check, reason), looked up once per process: an eager decode step
    calls this for every Linear, and the import machinery costs microseconds each time."""
    from . import kernels  # imports no triton (kernels/__init__.py)

    if not kernels.available():
        return None, None, "triton or CUDA not usable"
    try:
        module = importlib.import_module(f"llmprune.kernels.{kernel}")
    except ModuleNotFoundError as exc:
        if exc.name != f"llmprune.kernels.{kernel}":
            raise
        return None, None, f"no kernel module llmprune.kernels.{kernel}"
    launcher = getattr(module, f"{kernel}_matmul", None)
    if launcher is None:
        return None, None, f"llmprune.kernels.{kernel} has no {kernel}_matmul"
    return launcher, getattr(module, "supports", None), "kernel available"


def choose(x: Tensor, fmt: Format, packed: dict[str, Tensor]) -> tuple[str, Callable, str]:
    """``(path, fn, reason)`` with path ``"triton"`` or ``"reference"``."""
    mode = kernel_mode()
    if mode not in MODES:
        raise UserInputError(f"LLMPRUNE_KERNEL={mode}: choose one of {', '.join(MODES)}")
    if mode == "reference":
        return "reference", fmt.matmul_ref, "LLMPRUNE_KERNEL=reference"
    launcher, reason = _kernel(fmt, x, packed)
    if launcher is not None:
        return "triton", launcher, reason
    if mode == "triton":
        raise UserInputError(f"LLMPRUNE_KERNEL=triton but {reason}; unset LLMPRUNE_KERNEL or set it to auto")
    if x.is_cuda and (fmt.name, reason) not in _warned:
        _warned.add((fmt.name, reason))
        warnings.warn(f"{fmt.name}: using the reference matmul on CUDA ({reason})", stacklevel=3)
    return "reference", fmt.matmul_ref, reason


def matmul(x: Tensor, module: nn.Module) -> Tensor:
    """``x @ W.T + bias`` for a ``PackedLinear``; records the path taken on the module."""
    fmt = get_format(module.format)
    packed = module.packed()
    path, fn, reason = choose(x, fmt, packed)
    if (module.kernel_path, module.kernel_reason) != (path, reason):  # nn.Module.__setattr__ costs ~3 us a call
        module.kernel_path, module.kernel_reason = path, reason
    y = fn(x, packed)
    return y if module.bias is None else y + module.bias.to(y.dtype)


def kernel_paths(model: nn.Module) -> dict[str, str]:
    """``{qualified name: "triton" | "reference" | "unused"}`` for every packed module (after a forward)."""
    return {name: getattr(m, "kernel_path", "unused") for name, m in model.named_modules() if hasattr(m, "packed")
            and hasattr(m, "format")}
