"""Launch plumbing shared by the packed-format kernels: input checks, output allocation, regime choice and launch.

Every launcher follows the same steps (unsloth's kernel/launcher split): flatten ``x`` to ``[M, K]``, check the packed
tensors against docs/FORMATS.md, allocate (or check) the output, pick the regime from M, then launch either the
autotuned kernel (CUDA) or the raw kernel with one fixed config (Triton's interpreter, where autotuning would run every
config through numpy). Whether we are interpreting is read from the kernel object itself (``TRITON_INTERPRET=1`` makes
``@triton.jit`` return an ``InterpretedFunction``), so this module reads no environment variable. The autotuner's
search space lives in ``_configs.py``, the Triton building blocks the kernels share in ``_tiles.py``.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import torch
import triton
from torch import Tensor

from llmprune.errors import UserInputError

from ._configs import (
    GEMM_KEY, GEMV_FIXED, GEMM_FIXED, GEMV_KEY, GPU_PINNED, batch_block, gemm_configs, gemv_configs, m_bucket,
    block_tokens, pipelining, prune_gemm, prune_gemv, quick_bench, split_k_configs,
)
from .chunked import chunked_matmul
from .select import REGIMES, Rules, device_rules

ACT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
FLOATS = (torch.float16, torch.bfloat16, torch.float32)  # dtypes of stored values and statistics


def interpreting(kernel) -> bool:
    """True when ``kernel`` was built by Triton's CPU interpreter (TRITON_INTERPRET=1 at import time)."""
    return type(kernel).__name__ == "InterpretedFunction"


def flatten_input(x: Tensor, in_features: int, fmt: str, interpret: bool) -> Tensor:
    """``x[..., K]`` as a 2-D view with unit stride along K (copied only when the last dim is strided)."""
    if x.dtype not in ACT_DTYPES:
        raise UserInputError(f"{fmt} kernel: activations are {x.dtype}; cast them to float16 or bfloat16")
    if x.shape[-1] != in_features:
        raise UserInputError(
            f"{fmt} kernel: input has {x.shape[-1]} features but the packed weight expects {in_features}; "
            "pass the layer's own input"
        )
    want = "cpu" if interpret else "cuda"
    if x.device.type != want:
        fix = "unset TRITON_INTERPRET and move the input to CUDA" if want == "cuda" else "move the input to the CPU"
        raise UserInputError(f"{fmt} kernel: input is on {x.device}, this build runs on {want}; {fix}")
    x2 = x.reshape(-1, in_features)
    return x2 if x2.stride(1) == 1 else x2.contiguous()


def check_packed(packed: dict, specs: dict, device: torch.device, fmt: str) -> None:
    """Each named tensor exists, is contiguous, lives on ``device`` and has one of the allowed dtypes."""
    for name, dtypes in specs.items():
        if name not in packed:
            raise UserInputError(f"{fmt} kernel: packed weight lacks '{name}'; pack it with llmprune.formats.{fmt}")
        t = packed[name]
        if t.dtype not in dtypes:
            raise UserInputError(f"{fmt} kernel: '{name}' is {t.dtype}, expected one of {dtypes}; re-pack the layer")
        if t.device != device:
            raise UserInputError(f"{fmt} kernel: '{name}' is on {t.device} but the input is on {device}; move both")
        if not t.is_contiguous():
            raise UserInputError(f"{fmt} kernel: '{name}' is not contiguous; call .contiguous() on the packed tensors")


def expect_shape(t: Tensor, shape: tuple, name: str, fmt: str) -> None:
    if tuple(t.shape) != tuple(shape):
        raise UserInputError(f"{fmt} kernel: '{name}' has shape {tuple(t.shape)}, expected {tuple(shape)}; re-pack")


def alloc_out(x: Tensor, x2: Tensor, out_features: int, out: Tensor | None, fmt: str) -> Tensor:
    """A fresh ``[..., N]`` output, or the caller's ``out`` after checking it (tests pass a NaN-poisoned one)."""
    shape = (*x.shape[:-1], out_features)
    if out is None:
        return torch.empty(shape, dtype=x.dtype, device=x.device)
    if tuple(out.shape) != shape or out.dtype != x.dtype or out.device != x.device or not out.is_contiguous():
        raise UserInputError(f"{fmt} kernel: out= must be a contiguous {x.dtype} tensor of shape {shape} on {x.device}")
    return out


def dot_f32(x: Tensor, interpret: bool) -> bool:
    """Run tl.dot in float32: for fp32 inputs (exact IEEE), and for bf16 under the interpreter, whose numpy dot has
    no bfloat16 (it returns garbage; checked on triton 3.9)."""
    return x.dtype == torch.float32 or (interpret and x.dtype == torch.bfloat16)


class Replay(NamedTuple):
    """A launch as the autotuner's kept choice made it: the JIT kernel, its grid, its meta-parameters and the
    M_BUCKET argument. For a given token count and dtype nothing else varies between calls (``Call.replays``)."""

    kernel: object
    grid: tuple
    meta: dict
    bucket: int


def launch(kernel, tuned, grid, args: tuple, consts: dict, fixed: dict | None, chosen: dict | None = None,
           key: tuple = ()) -> tuple | None:
    """Run ``kernel`` with ``fixed`` meta-parameters (the interpreter, or a pinned config), else with the config the
    autotuned twin chose for ``key`` when ``chosen`` (a ``Call``'s memo) holds it, else through the autotuner, whose
    choice ``chosen`` then keeps. Why: Triton's ``Autotuner.run`` rebuilds its key from every argument on every call
    (~16 us of host Python per launch on this project's CPU, more than our launcher's own work); ``key`` must be as
    fine as the autotuner's (its key args and tensor dtypes), which ``KernelPair.run`` ensures per ``Call``. Returns
    ``(kernel, grid, meta)`` of a launch made with a kept choice (what ``Replay`` keeps), else None."""
    kept = fixed is None and chosen is not None and key in chosen
    if kept:
        fixed = chosen[key]
    if fixed is not None:
        meta = {**consts, **fixed}
        sizes = grid(meta)
        kernel[sizes](*args, **meta)
        return (kernel, sizes, meta) if kept else None
    tuned[grid](*args, **consts)
    if chosen is not None:
        chosen[key] = tuned.best_config.all_kwargs()
    return None


@dataclass(frozen=True)
class Call:
    """One format's launch: its packed tensors in kernel-argument order, output/input features, constexprs, the
    runtime ints that follow the strides (``extra``), and how to build the dense weight for the ``dense`` regime."""

    tensors: tuple
    n: int
    k: int
    consts: dict
    dequantize: Callable[[torch.dtype], Tensor]
    extra: tuple = ()
    gemm_ok: bool = True  # False: the GEMM kernel cannot take this layout (GQSA groups < 16), use GEMV blocks
    dequantize_rows: Callable[[int, int, Tensor], None] | None = None  # W[r0:r1] into a buffer (``chunked``)
    # the autotuner's config per (regime, M_BUCKET, activation dtype), once chosen: a Call that lives across
    # launches (a PackedLinear's, llmprune/dispatch.py) launches its kernels directly after the first (``launch``)
    chosen: dict = field(default_factory=dict, compare=False)
    # (from tokens, fn(x2) -> y2): a library path the dispatch table says beats the kernels from that batch on
    # (sparse24's semi-structured weight); taken when the caller forces no regime
    library: tuple[int, Callable[[Tensor], Tensor]] | None = None
    # (tokens, activation dtype) -> Replay, once a decode launch of that many tokens ran with a kept choice: later
    # calls go straight to the JIT kernel, skipping the regime choice, grid and meta-parameters (``KernelPair.matmul``)
    replays: dict = field(default_factory=dict, compare=False)

    def args(self, x2: Tensor, y: Tensor) -> tuple:
        """The decode and prefill kernels' arguments before M_BUCKET: x, the packed tensors, y, M, N, K, the row
        strides of x and y, ``extra``."""
        return (x2, *self.tensors, y, x2.shape[0], self.n, self.k, x2.stride(0), self.n, *self.extra)


class KernelPair:
    """The decode (GEMV), prefill (GEMM) and dequantize kernels of one format, with autotuned twins for CUDA."""

    def __init__(self, fmt: str, gemv, gemm, dequant, cols_per_acc: int = 1, split_k: dict | None = None,
                 gathers_x: bool = False):
        self.fmt, self.gemv, self.gemm, self.dequant = fmt, gemv, gemm, dequant
        # {BLOCK_B: whether that block's decode path splits K for a GROUP}, given as a divisor d of GROUP or a predicate
        self.split_k = {b: rule if callable(rule) else functools.partial(_divides, rule)
                        for b, rule in (split_k or {}).items()}
        self.prune_gemv = functools.partial(prune_gemv, cols_per_acc=cols_per_acc, gathers_x=gathers_x)
        tune = {"cache_results": True, "do_bench": quick_bench}  # tuned configs persist in Triton's cache dir
        configs = gemv_configs() + split_k_configs(tuple(self.split_k))
        self.gemv_tuned = triton.autotune(configs=configs, key=GEMV_KEY,
                                          prune_configs_by={"early_config_prune": self.prune_gemv}, **tune)(gemv)
        self.gemm_tuned = triton.autotune(configs=gemm_configs(), key=GEMM_KEY,
                                          prune_configs_by={"early_config_prune": prune_gemm}, **tune)(gemm)
        self.interpret = interpreting(gemv)  # read once: every launch asks, and Triton fixes it at import
        self.pinned = False  # True: skip autotuning on CUDA, use GPU_PINNED (compute-sanitizer runs)
        self.compile_for: tuple | None = None  # token counts: launches compile their autotune configs, run nothing

    def _fixed(self, which: int) -> dict | None:
        if self.interpret:
            return (GEMV_FIXED, GEMM_FIXED)[which]
        if not self.pinned:
            return None
        return {**GPU_PINNED[0], "SPLIT_K": 2} if which == 0 and self.split_k else GPU_PINNED[which]

    def splits(self, meta: dict, m: int, n: int) -> int:
        """Programs per output tile along K: SPLIT_K on the paths that split, 1 elsewhere (so a fixed config with
        SPLIT_K > 1 never launches duplicate programs on the other paths) and when the shared workspace cannot
        hold the partials or tickets of an ``[m, n]`` launch (the kernels read the split count from the grid)."""
        split = meta.get("SPLIT_K", 1)
        bb = meta["BLOCK_B"]
        rule = self.split_k.get(bb)
        path = rule is not None and rule(meta.get("GROUP", 0))
        tiles = cdiv(m, bb) * cdiv(n, meta["BLOCK_N"])
        fits = split * m * n <= SPLIT_K_PARTIALS and tiles <= SPLIT_K_TILES
        return split if path and fits else 1

    def regime(self, m: int, regime: str | None, rules: Rules) -> str:
        """The caller's regime, or the choice of ``rules`` (kernels/select.py, the GPU's table) for ``m`` tokens."""
        if regime is None:
            return rules.choose(self.fmt, m)
        if regime not in REGIMES:
            raise UserInputError(f"regime '{regime}' is unknown; use one of {', '.join(REGIMES)} or None (auto)")
        return regime

    def run(self, args: tuple, m: int, n: int, consts: dict, regime: str, chosen: dict | None = None,
            dtype: torch.dtype | None = None) -> Replay | None:
        """Launch over ``[m, n]`` outputs; ``args`` hold (..., M, N, K, stride_xm, stride_om, extra ints); a decode
        program takes at most the largest token block (``block_tokens``): more tokens sent to the decode kernel
        run as several blocks. The dispatch table decides whether decode runs, not its block: a forced ``gemv`` (the
        benchmark measuring the decode limit) gets the block best for its token count. Returns the launch as a
        ``Replay`` when it ran with a kept choice of ``chosen``."""
        if self.compile_for is not None:
            self.compile_configs(regime, (*args, 1), consts)
            return None
        if regime == "gemv":
            tokens = block_tokens(m)
            fixed = self._fixed(0)
            if fixed is not None:  # the interpreter's or a pinned tile, at the token block (pipelined when FMA)
                block = batch_block(tokens)
                fixed = {**fixed, "BLOCK_B": block, **pipelining(block)[-1]}

            def grid(meta):
                return (cdiv(n, meta["BLOCK_N"]), cdiv(m, meta["BLOCK_B"]), self.splits(meta, m, n))

            bucket = m_bucket(tokens)
            made = launch(self.gemv, self.gemv_tuned, grid, (*args, bucket), consts, fixed, chosen,
                          ("gemv", bucket, dtype))
        else:

            def grid(meta):
                return (cdiv(m, meta["BLOCK_M"]) * cdiv(n, meta["BLOCK_N"]),)

            bucket = m_bucket(m)
            made = launch(self.gemm, self.gemm_tuned, grid, (*args, bucket), consts, self._fixed(1), chosen,
                          ("gemm", bucket, dtype))
        return None if made is None else Replay(*made, bucket)

    def tuned_configs(self, regime: str, tokens) -> list:
        """The configs the autotuner times for ``regime`` ('gemv' or 'gemm') launches of each token count in
        ``tokens``, each once (a decode launch is keyed by the tokens of one block)."""
        if regime == "gemv":
            tuned, prune = self.gemv_tuned, self.prune_gemv
            buckets = {m_bucket(block_tokens(m)) for m in tokens}
        else:
            tuned, prune = self.gemm_tuned, prune_gemm
            buckets = {m_bucket(m) for m in tokens}
        return list({str(c): c for b in sorted(buckets) for c in prune(tuned.configs, {"M_BUCKET": b})}.values())

    def compile_configs(self, regime: str, args: tuple, consts: dict) -> None:
        """Compile, without launching, every config the autotuner would time for ``regime`` at the token counts
        of ``compile_for``, with the very arguments and meta-parameters its timing launches pass (so Triton's cache
        key is theirs). benchmarks/kernels.py --precompile runs this under Triton's
        ``AsyncCompileMode`` to compile on every CPU core before a first autotuning, which compiles one config at a
        time. The key ignores the token counts (not specialized, ``_configs.launched``), so one launch per regime
        and shape serves every count."""
        kernel = self.gemv if regime == "gemv" else self.gemm
        for config in self.tuned_configs(regime, self.compile_for):
            kernel.warmup(*args, grid=(1,), **consts, **config.all_kwargs())

    def matmul(self, x: Tensor, call: Call, out: Tensor | None, regime: str | None) -> Tensor:
        """The launcher body every format shares: flatten x, allocate y, pick the regime, launch. A decode launch of
        the dispatch table's choice made with a kept config is replayed for later calls of as many tokens and the
        same dtype (``Call.replays``: ~8 us less host Python per call here, ``benchmarks/host_overhead.py``); prefill
        launches are not kept (one per prompt length would pile up, and their GPU time dwarfs the host's)."""
        x2 = flatten_input(x, call.k, self.fmt, self.interpret)
        m = x2.shape[0]
        auto = out is None and regime is None
        replay = call.replays.get((m, x.dtype)) if auto else None
        if replay is not None and not self.pinned and self.compile_for is None:
            y = alloc_out(x, x2, call.n, None, self.fmt)
            replay.kernel[replay.grid](*call.args(x2, y), replay.bucket, **replay.meta)
            return y
        if regime is None and call.library is not None and m >= call.library[0]:
            y = call.library[1](x2).view(*x.shape[:-1], call.n)
            return y if out is None else out.copy_(y)
        y = alloc_out(x, x2, call.n, out, self.fmt)
        if m == 0:
            return y
        rules = device_rules(x2.device)
        regime = self.regime(m, regime, rules)
        if regime == "gemm" and not call.gemm_ok:
            regime = "gemv"
        if regime == "chunked" and call.dequantize_rows is None:
            regime = "dense"  # formats whose statistics or outliers span rows (spqr) dequantize whole
        if regime == "dense":
            dense_matmul(x2, call.dequantize(x.dtype), y)
        elif regime == "chunked":
            chunked_matmul(x2, call.n, call.k, call.dequantize_rows, y.view(m, call.n))
        else:
            made = self.run(call.args(x2, y), m, call.n, {**call.consts, "DOT_F32": dot_f32(x, self.interpret)}, regime,
                            call.chosen, x.dtype)
            if made is not None and auto and regime == "gemv":  # decode: a few token counts, called per token
                call.replays[(m, x.dtype)] = made
        return y

    def run_dequant(self, args: tuple, n: int, cols: int, consts: dict, kernel=None) -> None:
        """Launch the dequantize kernel (or another ``kernel`` of the same grid) over an ``[n, cols]`` grid of tiles
        (cols: dense or kept columns)."""
        bn, bk = (8, 32) if self.interpret else (32, 128)
        kernel = kernel or self.dequant
        kernel[(cdiv(n, bn), cdiv(cols, bk))](*args, **consts, BLOCK_N=bn, BLOCK_K=bk)


def cdiv(a: int, b: int) -> int:
    """Ceiling division in plain Python for host code: ``triton.cdiv`` is a JIT helper whose call costs ~2-3 us on
    the host (4 per decode launch: the grid and the split-K check), more than the rest of the grid's work."""
    return -(-a // b)


def _divides(d: int, group: int) -> bool:
    return group % d == 0


SPLIT_K_PARTIALS = 1 << 22  # float32 partials in the workspace (16 MB): 8 splits x 16 tokens x 28672 outputs

SPLIT_K_TILES = 1 << 18  # ticket counters: output tiles of one split launch

_split_k: dict = {}


def split_k_buffers(device: torch.device) -> tuple[Tensor, Tensor]:
    """(partials, tickets) for split-K decode, allocated once per device (17 MB) and shared by every launch on it,
    as launches on one stream run in order: float32 partial sums (splits x tokens x outputs; ``KernelPair.splits``
    does not split a launch they would overflow), and the int32 counters the programs of one output tile take
    tickets from. The last program of a tile sums the partials and puts its counter back to zero, so the counters
    stay zero between calls and CUDA-graph replays, and a captured graph keeps valid addresses.

    Limitation: packed layers running at the same time on two CUDA streams of one device would share these buffers
    (split-K decode launches only: 1-16 tokens); run concurrent models on separate devices or one stream."""
    buffers = _split_k.get(device)
    if buffers is None:
        buffers = _split_k[device] = (torch.empty(SPLIT_K_PARTIALS, dtype=torch.float32, device=device),
                                      torch.zeros(SPLIT_K_TILES, dtype=torch.int32, device=device))
    return buffers


def word_aligned(t: Tensor) -> Tensor:
    """``t``, or a copy when its data does not start on a 4-byte boundary: decode paths read packed codes as 32-bit
    words (a view at an odd offset would fault on a GPU; the interpreter would read it anyway)."""
    return t.clone() if t.data_ptr() % 4 else t


def dense_buffer(out: Tensor | None, n: int, k: int, dtype: torch.dtype, device) -> Tensor:
    """A fresh ``[n, k]`` tensor for a dequantize kernel, or the caller's ``out`` once checked."""
    if out is None:
        return torch.empty(n, k, dtype=dtype, device=device)
    if tuple(out.shape) != (n, k) or out.dtype != dtype or not out.is_contiguous():
        raise UserInputError(f"dequantize out= must be a contiguous {dtype} tensor of shape ({n}, {k})")
    return out


def row_slice(packed: dict, names: tuple, r0: int, r1: int) -> dict:
    """Rows r0:r1 of the per-row packed tensors ``names`` (views; row-major slices stay contiguous)."""
    return {name: packed[name][r0:r1] for name in names}


def dense_matmul(x2: Tensor, weight: Tensor, y: Tensor) -> None:
    """y = x2 @ weight.T with the dense library GEMM (cuBLAS on CUDA), written into y's storage."""
    torch.mm(x2, weight.t(), out=y.view(x2.shape[0], weight.shape[0]))


def supports(dtype: torch.dtype) -> bool:
    """The dispatcher's pre-check (llmprune/dispatch.py): activation dtypes the kernels take."""
    return dtype in ACT_DTYPES
