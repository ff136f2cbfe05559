"""Choose the matmul implementation of a packed layer: a Triton kernel on CUDA when one exists, the format's plain
torch ``matmul_ref`` anywhere else.

``LLMPRUNE_KERNEL`` (read through ``settings.kernel_mode``): ``auto`` (default) takes the kernel when the input is on
CUDA, Triton is usable and ``llmprune.kernels.<format>`` provides ``<format>_matmul`` (and, when defined, its
``supports(dtype)`` accepts the activations); ``reference`` always takes ``matmul_ref``; ``triton`` demands the
kernel and fails with a one-line error naming the reason otherwise. The choice depends only on the mode, the format,
the device type and the dtype, so it is made once per combination. The path taken is recorded on the module
(``kernel_path``, ``kernel_reason``) so benchmarks and reports print it; a CUDA fallback also warns once per reason.
Kernels are imported lazily and only for CUDA inputs, so CPU runs never import triton.

Under ``torch.compile`` the choice is made while tracing (a constant of the graph: changing ``LLMPRUNE_KERNEL``
afterwards needs a recompile) and a kernel call enters the graph as the custom op ``llmprune::packed_matmul``, which
the compiler treats as opaque: the launchers (autotuner, pointer checks) are Python it cannot trace, and without the
op every Linear would break the graph. Eager calls skip the op's dispatcher overhead. The module's ``kernel_path``
is not updated inside a compiled graph.
"""
from __future__ import annotations

import importlib
import warnings
from typing import Callable

import torch
from torch import Tensor, nn

from .errors import UserInputError
from .formats import Format, get_format
from .settings import kernel_mode

MODES = ("auto", "reference", "triton")
_warned: set[tuple[str, str]] = set()
_paths: dict[tuple, tuple[str, str]] = {}
_launchers: dict[str, tuple[Callable | None, Callable | None, str]] = {}


def _launcher(kernel: str) -> tuple[Callable | None, Callable | None, str]:
    """(``<kernel>_matmul``, its ``supports`` pre-check, reason), looked up once per process: an eager decode step
    dispatches every Linear, and the import machinery costs microseconds each time."""
    if kernel not in _launchers:
        _launchers[kernel] = _find_launcher(kernel)
    return _launchers[kernel]


def _find_launcher(kernel: str) -> tuple[Callable | None, Callable | None, str]:
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


def constant_while_tracing(fn: Callable) -> Callable:
    """``torch.compiler.assume_constant_result(fn)`` without importing ``torch._dynamo`` (and triton with it) when
    this module is imported: the public decorator only sets this flag (torch 2.13); a test compares the two."""
    fn._dynamo_marked_constant = True
    return fn


@constant_while_tracing  # run once while tracing: a constant of the compiled graph
def path_for(fmt_name: str, device_type: str, dtype: torch.dtype) -> tuple[str, str]:
    """``(path, reason)``, path ``"triton"`` or ``"reference"``, for activations of ``dtype`` on ``device_type``
    under the current ``LLMPRUNE_KERNEL``; one-line ``UserInputError`` for a bad mode or an unmet ``triton``."""
    mode = kernel_mode()
    key = (mode, fmt_name, device_type, dtype)
    if key not in _paths:
        _paths[key] = _decide(mode, get_format(fmt_name), device_type, dtype)
    path, reason = _paths[key]
    if path == "reference" and device_type == "cuda" and mode == "auto" and (fmt_name, reason) not in _warned:
        _warned.add((fmt_name, reason))
        warnings.warn(f"{fmt_name}: using the reference matmul on CUDA ({reason})", stacklevel=4)
    return path, reason


def _decide(mode: str, fmt: Format, device_type: str, dtype: torch.dtype) -> tuple[str, str]:
    if mode not in MODES:
        raise UserInputError(f"LLMPRUNE_KERNEL={mode}: choose one of {', '.join(MODES)}")
    if mode == "reference":
        return "reference", "LLMPRUNE_KERNEL=reference"
    reason = _kernel_reason(fmt, device_type, dtype)
    if reason == "kernel available":
        return "triton", reason
    if mode == "triton":
        raise UserInputError(f"LLMPRUNE_KERNEL=triton but {reason}; unset LLMPRUNE_KERNEL or set it to auto")
    return "reference", reason


def _kernel_reason(fmt: Format, device_type: str, dtype: torch.dtype) -> str:
    """"kernel available", or why the Triton launcher cannot take this call."""
    if fmt.kernel is None:
        return f"format {fmt.name} has no kernel"
    if device_type != "cuda":
        return f"input on {device_type}"
    launcher, supports, reason = _launcher(fmt.kernel)
    if launcher is not None and supports is not None and not supports(dtype):
        return f"{fmt.kernel} kernel does not support {dtype} activations"
    return reason


@torch.library.custom_op("llmprune::packed_matmul", mutates_args=())
def packed_matmul(x: Tensor, tensors: list[Tensor], kernel: str, names: str, out_features: int) -> Tensor:
    """``<kernel>_matmul(x, packed)`` as one opaque graph node; ``names`` are the packed tensors' names, joined by
    commas (custom-op schemas take no list of strings)."""
    return _launcher(kernel)[0](x, dict(zip(names.split(","), tensors)))


@packed_matmul.register_fake
def _packed_matmul_shape(x, tensors, kernel, names, out_features):
    return x.new_empty((*x.shape[:-1], out_features))


def matmul(x: Tensor, module: nn.Module) -> Tensor:
    """``x @ W.T + bias`` for a ``PackedLinear``; records the path taken on the module (eager calls)."""
    fmt = get_format(module.format)
    packed = module.packed()
    path, reason = path_for(fmt.name, x.device.type, x.dtype)
    compiling = torch.compiler.is_compiling()
    if not compiling and (module.kernel_path, module.kernel_reason) != (path, reason):  # __setattr__ costs ~3 us
        module.kernel_path, module.kernel_reason = path, reason
    if path != "triton":
        y = fmt.matmul_ref(x, packed)
    elif compiling:
        y = packed_matmul(x, list(packed.values()), fmt.kernel, ",".join(packed), module.out_features)
    else:
        y = _launcher(fmt.kernel)[0](x, packed)
    return y if module.bias is None else y + module.bias.to(y.dtype)


def kernel_paths(model: nn.Module) -> dict[str, str]:
    """``{qualified name: "triton" | "reference" | "unused"}`` for every packed module (after a forward)."""
    return {name: getattr(m, "kernel_path", "unused") for name, m in model.named_modules() if hasattr(m, "packed")
            and hasattr(m, "format")}
