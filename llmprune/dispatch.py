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
op every Linear would break the graph. Eager calls skip the op's dispatcher overhead, and a module's eager kernel
call reuses a launch checked and built once (``_plan``: tens of microseconds of host Python per call otherwise, paid
by every Linear of every decode step). The module's ``kernel_path`` is not updated inside a compiled graph.
"""
from __future__ import annotations

import functools
import importlib
import warnings
import weakref
from typing import Callable, NamedTuple

import torch
from torch import Tensor, nn

from .errors import UserInputError
from .formats import Format, get_format
from .settings import kernel_mode
from .tensor_state import fingerprint

MODES = ("auto", "reference", "triton")
_warned: set[tuple[str, str]] = set()
_paths: dict[tuple, tuple[str, str]] = {}


class Launcher(NamedTuple):
    """A format's kernel entry points (``llmprune.kernels.<kernel>``), or why there are none (``matmul`` None)."""

    matmul: Callable | None  # <kernel>_matmul(x, packed): checks the packed tensors on every call
    supports: Callable | None  # supports(dtype): the activation dtypes it takes (optional)
    reason: str
    prepare: Callable | None = None  # prepare(packed, device, k) -> the checked launch, built once per module
    run: Callable | None = None  # run(x, prepared) -> y


_launchers: dict[str, Launcher] = {}


def _launcher(kernel: str) -> Launcher:
    """The kernel's entry points, looked up once per process: an eager decode step dispatches every Linear, and the
    import machinery costs microseconds each time."""
    if kernel not in _launchers:
        _launchers[kernel] = _find_launcher(kernel)
    return _launchers[kernel]


def _find_launcher(kernel: str) -> Launcher:
    from . import kernels  # imports no triton (kernels/__init__.py)

    if not kernels.available():
        return Launcher(None, None, "triton or CUDA not usable")
    return import_launcher(kernel)


def import_launcher(kernel: str) -> Launcher:
    """``llmprune.kernels.<kernel>``'s entry points (imports triton; tests use it to run the kernels on CPU under
    Triton's interpreter)."""
    try:
        module = importlib.import_module(f"llmprune.kernels.{kernel}")
    except ModuleNotFoundError as exc:
        if exc.name != f"llmprune.kernels.{kernel}":
            raise
        return Launcher(None, None, f"no kernel module llmprune.kernels.{kernel}")
    launcher = getattr(module, f"{kernel}_matmul", None)
    if launcher is None:
        return Launcher(None, None, f"llmprune.kernels.{kernel} has no {kernel}_matmul")
    prepare, pair = getattr(module, "prepare", None), getattr(module, "KERNELS", None)
    run = None if prepare is None or pair is None else functools.partial(_run_prepared, pair)
    return Launcher(launcher, getattr(module, "supports", None), "kernel available", prepare, run)


def _run_prepared(pair, x: Tensor, call) -> Tensor:
    return pair.matmul(x, call, None, None)


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
    launcher = _launcher(fmt.kernel)
    if launcher.matmul is not None and launcher.supports is not None and not launcher.supports(dtype):
        return f"{fmt.kernel} kernel does not support {dtype} activations"
    return launcher.reason


_modules: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # id -> PackedLinear, for the op below


def register(module: nn.Module) -> None:
    """Let compiled graphs find ``module``'s plan from its id (held weakly; ``PackedLinear`` registers itself when
    built or copied: registering while tracing would be a side effect the compiler cannot replay)."""
    _modules[id(module)] = module


@torch.library.custom_op("llmprune::packed_matmul", mutates_args=())
def packed_matmul(x: Tensor, tensors: list[Tensor], kernel: str, names: str, out_features: int,
                  owner: int = 0) -> Tensor:
    """``<kernel>_matmul(x, packed)`` as one opaque graph node; ``names`` are the packed tensors' names, joined by
    commas (custom-op schemas take no list of strings). ``owner``: the id of the ``PackedLinear`` traced (a graph
    constant): when that module still holds exactly these tensors, its plan runs (checked once, the autotuner's
    choice kept), else the launcher checks everything per call."""
    module = _modules.get(owner)
    if module is not None and _holds(module, tensors):
        plan = _plan(module, x, kernel)
        return plan.run(x, plan.prepared)
    return _launcher(kernel).matmul(x, dict(zip(names.split(","), tensors)))


def _holds(module: nn.Module, tensors: list[Tensor]) -> bool:
    buffers = module._buffers.values()
    return len(buffers) == len(tensors) and all(a is b for a, b in zip(buffers, tensors))


@packed_matmul.register_fake
def _packed_matmul_shape(x, tensors, kernel, names, out_features, owner=0):
    return x.new_empty((*x.shape[:-1], out_features))


def matmul(x: Tensor, module: nn.Module) -> Tensor:
    """``x @ W.T + bias`` for a ``PackedLinear``; records the path taken on the module (eager calls)."""
    fmt = get_format(module.format)
    path, reason = path_for(fmt.name, x.device.type, x.dtype)
    compiling = torch.compiler.is_compiling()
    if not compiling and (module.kernel_path, module.kernel_reason) != (path, reason):  # __setattr__ costs ~3 us
        module.kernel_path, module.kernel_reason = path, reason
    if path == "triton" and not compiling:
        return _plan(module, x, fmt.kernel).forward(x)
    packed = module.packed()
    if path != "triton":
        y = fmt.matmul_ref(x, packed)
    else:
        y = packed_matmul(x, list(packed.values()), fmt.kernel, ",".join(packed), module.out_features, id(module))
    return y if module.bias is None else y + module.bias.to(y.dtype)


class Plan(NamedTuple):
    """An eager kernel call of one ``PackedLinear`` for one input device and dtype: the launch its packed tensors
    make (checked once), and the bias in the activations' dtype. Valid while ``key`` holds."""

    key: tuple
    tensors: tuple  # the fingerprinted tensors, held so that their ids stay unique while the key is compared
    run: Callable
    prepared: object
    bias: Tensor | None

    def forward(self, x: Tensor) -> Tensor:
        y = self.run(x, self.prepared)
        return y if self.bias is None else y.add_(self.bias)


PLAN = "_kernel_plan"  # where a module keeps its Plan (in its __dict__: nn.Module.__setattr__ costs ~3 us)


def drop_plan(module: nn.Module) -> None:
    """Forget ``module``'s plan (its tensors were moved, or its kernel options changed); the next call rebuilds it."""
    module.__dict__.pop(PLAN, None)


def _plan(module: nn.Module, x: Tensor, kernel: str) -> Plan:
    """The module's cached ``Plan``, rebuilt when the input's device or dtype changes or a buffer or the bias was
    replaced, written in place or given another storage (``tensor_state.fingerprint``): checking the packed tensors
    and building the launch cost tens of microseconds per call otherwise, paid by every Linear of every decode step.
    Not cached while a CUDA graph is being captured (tensors made then, e.g. a kept map, are written only at replay);
    ``PackedLinear._apply`` (``.to``, ``.half``) drops it, so no plan keeps a moved module's old tensors alive, and so
    does ``use_semi_structured`` (the module's ``kernel_options`` are the prepare step's)."""
    tensors = (*module._buffers.values(), module._parameters.get("bias"))
    key = (x.device, x.dtype, fingerprint(tensors))
    plan = module.__dict__.get(PLAN)
    if plan is not None and plan.key == key:
        return plan
    launcher, packed = _launcher(kernel), module.packed()
    if launcher.prepare is None:  # a kernel module without ``prepare``: its launcher checks on every call
        run, prepared = launcher.matmul, packed
    else:
        run, prepared = launcher.run, launcher.prepare(packed, x.device, module.in_features, **module.kernel_options)
    bias = tensors[-1]
    plan = Plan(key, tensors, run, prepared, None if bias is None else bias.detach().to(x.dtype))
    if not (x.is_cuda and torch.cuda.is_current_stream_capturing()):
        module.__dict__[PLAN] = plan
    return plan


def use_semi_structured(model: nn.Module, enabled: bool = True) -> int:
    """Let the ``sparse24`` layers of ``model`` run batches from the GPU table's ``semi_from`` tokens on PyTorch's
    semi-structured 2:4 weight (cuSPARSELt/CUTLASS; the H100 timed it at 0.48-0.68x of our kernels' time from 4
    tokens, 1.13x at one). It is built from the packed weight at a layer's first CUDA forward (fp16/bf16 only) and
    held by the layer's plan: as much memory again as the packed weight, not counted by ``packed_bytes``. Returns
    the number of layers changed."""
    layers = [m for m in model.modules() if getattr(m, "format", None) == "sparse24" and hasattr(m, "kernel_options")]
    for module in layers:
        module.kernel_options = {"semi_structured": True} if enabled else {}
        drop_plan(module)
    return len(layers)


def kernel_paths(model: nn.Module) -> dict[str, str]:
    """``{qualified name: "triton" | "reference" | "unused"}`` for every packed module (after a forward)."""
    return {name: getattr(m, "kernel_path", "unused") for name, m in model.named_modules() if hasattr(m, "packed")
            and hasattr(m, "format")}
