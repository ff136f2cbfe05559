"""Plumbing shared by the packed-format kernels: input checks, output allocation, configs and launch.

Every launcher follows the same steps (unsloth's kernel/launcher split): flatten ``x`` to ``[M, K]``, check the packed
tensors against docs/FORMATS.md, allocate (or check) the output, pick the regime from M, then launch either the
autotuned kernel (CUDA) or the raw kernel with one fixed config (Triton's interpreter, where autotuning would run every
config through numpy). Whether we are interpreting is read from the kernel object itself (``TRITON_INTERPRET=1`` makes
``@triton.jit`` return an ``InterpretedFunction``), so this module reads no environment variable.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import torch
import triton
import triton.language as tl
from torch import Tensor

from llmprune.errors import UserInputError

from .chunked import chunked_matmul
from .select import REGIMES, Rules, device_rules

ACT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


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


def batch_block(m: int) -> int:
    """BLOCK_B for the decode kernel's fixed configs: 1, 2 or 4 use CUDA-core FMAs; 16 pads the batch for one
    tl.dot. The autotuned launch also tries 16 for 2-4 tokens (``decode_blocks``)."""
    for b in (1, 2, 4):
        if m <= b:
            return b
    return 16


def decode_blocks(bucket: int, dot: bool) -> set:
    """BLOCK_B candidates of an autotuned decode launch of ``bucket`` (``m_bucket``) tokens: the FMA block that holds
    them and, for 2-4 tokens of formats with a tl.dot decode path, also the padded block 16: the autotuner times
    both. Statically the tl.dot path issues fewer instructions per weight byte from 2 tokens (int4 12.4 vs 17.7-23.4,
    tests/kernels/instruction_mix.py) but adds shared-memory round trips and barriers, so timings decide. One token
    stays on the FMA paths (8.5 vs 12.4); 5 or more take 16."""
    fma = batch_block(bucket)
    return {fma, 16} if dot and 1 < fma < 16 else {fma}


def m_bucket(m: int) -> int:
    """Autotune key for the batch: the next power of two, so prefill lengths share tuned configs (plain int
    arithmetic: ``triton.next_power_of_2`` is a jit helper that costs microseconds per launch)."""
    return 1 << (max(int(m), 1) - 1).bit_length()


def dot_f32(x: Tensor, interpret: bool) -> bool:
    """Run tl.dot in float32: for fp32 inputs (exact IEEE), and for bf16 under the interpreter, whose numpy dot has
    no bfloat16 (it returns garbage; checked on triton 3.9)."""
    return x.dtype == torch.float32 or (interpret and x.dtype == torch.bfloat16)


def gemv_configs(blocks=(1, 2, 4, 16)) -> list:
    """Row-block configs for decode, one set per token block: small BLOCK_N gives enough programs to fill the SMs at
    N = 4096 for one token; the padded tl.dot path (16 tokens) wants wide BLOCK_N, since every program re-reads its
    [16, K] slice of x (``prune_gemv`` keeps those that suit the launch)."""
    shapes = [(4, 512, 2), (8, 256, 4), (8, 512, 4), (16, 256, 4), (16, 128, 4), (32, 128, 8), (64, 64, 8),
              (64, 128, 4), (64, 256, 8), (128, 64, 4), (128, 128, 8),  # wide rows: fewer re-reads of x at 16 tokens
              (8, 128, 4), (16, 64, 4), (32, 64, 8)]  # small tiles whose 2-4 token accumulators fit in registers
    return [triton.Config({"BLOCK_B": b, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=2)
            for b in blocks for bn, bk, w in shapes]


SPLIT_K = (2, 4, 8)
BIG_TILES = [(64, 256, 4), (128, 128, 4), (256, 128, 8), (32, 256, 4)]  # 64 B of int4 codes per thread per step


def split_k_configs(blocks) -> list:
    """Configs for the token blocks whose decode path splits K (int4, sparse24_int4, group_sparse_int4): wide tiles
    (fewer loop instructions per byte, tests/kernels/instruction_mix.py) are too few programs for N = 4096 on 132 SMs
    unless K is split among SPLIT_K programs as well."""
    return [triton.Config({"BLOCK_B": b, "BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": s}, num_warps=w, num_stages=2)
            for b in blocks for bn, bk, w in BIG_TILES for s in (1, *SPLIT_K)]


def gemm_configs() -> list:
    """Tile configs for prefill in the spirit of Triton's matmul tutorial (grouped ordering, pipelined K loop)."""
    shapes = [(16, 64, 128, 4, 3), (32, 64, 64, 4, 4), (64, 64, 64, 4, 4), (64, 128, 64, 8, 3),
              (128, 128, 64, 8, 3), (128, 64, 64, 8, 4), (32, 128, 64, 4, 4)]
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=st)
            for bm, bn, bk, w, st in shapes]


ACC_PER_THREAD = 32  # fp32 accumulator registers per thread for 2-4 tokens; more spilled on sm_90 (instruction_mix)


def prune_gemv(configs, named_args, cols_per_acc: int = 1, dot: bool = True, **kwargs) -> list:
    """The configs of the launch's token blocks (``decode_blocks`` of its M_BUCKET). The padded tl.dot decode path
    (BLOCK_B = 16) needs BLOCK_N >= 16 (tl.dot's minimum tile); the 2-4 token FMA path keeps a
    [BLOCK_B, BLOCK_N, BLOCK_K / cols_per_acc] accumulator (int4's code-word path sums 8 columns per entry), so drop
    tiles that would not fit in registers."""
    blocks = decode_blocks(named_args.get("M_BUCKET", 1), dot)

    def keep(c) -> bool:
        bb, bn = c.kwargs["BLOCK_B"], c.kwargs["BLOCK_N"]
        if bb not in blocks:
            return False
        if bb >= 16:
            return bn >= 16
        return bb == 1 or bb * bn * c.kwargs["BLOCK_K"] // cols_per_acc <= ACC_PER_THREAD * 32 * c.num_warps

    return [c for c in configs if keep(c)]


def prune_gemm(configs, named_args, **kwargs) -> list:
    """Skip row tiles far taller than the batch (they only multiply padding)."""
    limit = max(16, named_args.get("M_BUCKET", 1 << 30))
    return [c for c in configs if c.kwargs["BLOCK_M"] <= limit] or configs[:1]


def quick_bench(fn, quantiles=None):
    """Autotuning timer: fewer repetitions than Triton's default (each config still runs >= 25 ms)."""
    return triton.testing.do_bench(fn, warmup=5, rep=25, quantiles=quantiles)


def launched(fn):
    """``triton.jit`` for the kernels a ``KernelPair`` launches. M_BUCKET is only the autotuner's key (the bodies
    never read it), so it is not specialized: Triton would otherwise compile ints equal to 1 or divisible by 16
    separately, and every config three times over the decode buckets 1, 2-8 and 16."""
    return triton.jit(fn, do_not_specialize=["M_BUCKET"])


GEMV_KEY = ["N", "K", "M_BUCKET"]
GEMM_KEY = ["N", "K", "M_BUCKET"]
GEMV_FIXED = {"BLOCK_N": 16, "BLOCK_K": 32}  # interpreter: one small config (valid on GPUs too), several K steps
GEMM_FIXED = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 32}
GPU_PINNED = ({"BLOCK_N": 16, "BLOCK_K": 256, "num_warps": 4}, {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64})


def launch(kernel, tuned, grid, args: tuple, consts: dict, fixed: dict | None) -> None:
    """Run ``kernel`` with ``fixed`` meta-parameters (the interpreter, or a pinned config), else the autotuned twin."""
    if fixed is not None:
        meta = {**consts, **fixed}
        kernel[grid(meta)](*args, **meta)
    else:
        tuned[grid](*args, **consts)


@triton.jit
def matvec_init(BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """The decode accumulator, reduced once after the K loop (a cross-lane reduction every K step — ``tl.sum`` in
    the loop — compiled to ~30 warp shuffles per weight byte on sm_90, tests/kernels/instruction_mix.py). One token:
    [BLOCK_N, BLOCK_K] partial products; 2-4 tokens (CUDA-core FMAs): [BLOCK_B, BLOCK_N, BLOCK_K]; 16 tokens:
    [BLOCK_B, BLOCK_N] fed by one padded tl.dot per step."""
    if BLOCK_B == 1:
        return tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
    elif BLOCK_B <= 4:
        return tl.zeros((BLOCK_B, BLOCK_N, BLOCK_K), tl.float32)
    else:
        return tl.zeros((BLOCK_B, BLOCK_N), tl.float32)


@triton.jit
def matvec_step(acc, x, w, BLOCK_B: tl.constexpr, DOT_F32: tl.constexpr):
    """``acc`` (``matvec_init``) plus x[BLOCK_B, BLOCK_K] times the weight tile w[BLOCK_N, BLOCK_K]."""
    if BLOCK_B == 1:
        return acc + w * x.to(tl.float32)
    elif BLOCK_B <= 4:
        return acc + x.to(tl.float32)[:, None, :] * w[None, :, :]
    else:
        return dot_acc(x, tl.trans(w), acc, DOT_F32)


@triton.jit
def matvec_finish(acc, BLOCK_B: tl.constexpr):
    """The [BLOCK_B, BLOCK_N] result of a ``matvec_step`` loop."""
    if BLOCK_B == 1:
        return tl.sum(acc, axis=1)[None, :]
    elif BLOCK_B <= 4:
        return tl.sum(acc, axis=2)
    else:
        return acc


@triton.jit
def weight_dot(w_f32, x, acc, DOT_F32: tl.constexpr):
    """acc [BLOCK_N, BLOCK_B] + w @ x.T, the dequantized weight tile (float32, rounded to x's dtype as tensor-core
    kernels do) as tl.dot's left operand: sm_90 then issues wgmma with 64-row weight tiles, the padded token block
    as N (fewer instructions per weight byte than x @ w.T, tests/kernels/instruction_mix.py)."""
    if DOT_F32:
        return tl.dot(w_f32, tl.trans(x.to(tl.float32)), acc, input_precision="ieee")
    else:
        return tl.dot(w_f32.to(x.dtype), tl.trans(x), acc)


@triton.jit
def dot_acc(a, b_f32, acc, DOT_F32: tl.constexpr):
    """acc + a @ b with b (the dequantized weight tile, float32) rounded to a's dtype as tensor-core kernels do."""
    if DOT_F32:
        return tl.dot(a.to(tl.float32), b_f32, acc, input_precision="ieee")
    else:
        return tl.dot(a, b_f32.to(a.dtype), acc)


@triton.jit
def load_x(x_ptr, rows, cols, M, K, stride_xm):
    """The activation tile x[rows, cols], zero outside [M, K]."""
    mask = (rows[:, None] < M) & (cols[None, :] < K)
    return tl.load(x_ptr + rows[:, None] * stride_xm + cols[None, :], mask=mask, other=0.0)


@triton.jit
def store_row(out_ptr, y, row, cols, M, N, stride_om):
    """out[row, cols] = y (one token's outputs), masked to [M, N]."""
    tl.store(out_ptr + row * stride_om + cols, y.to(out_ptr.dtype.element_ty), mask=(cols < N) & row_live(cols, row, M))


@triton.jit
def row_live(cols, row, M):
    """``row < M`` as a block shaped like ``cols`` (Triton's interpreter rejects a scalar and a block in one mask;
    the compiler folds ``cols * 0``)."""
    return (cols * 0 + row) < M


@triton.jit
def split_k_range(K, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr):
    """[k_lo, k_hi) of K for split program_id(2): whole BLOCK_K steps, as even as possible (later splits may be
    empty when K has fewer steps than splits). The launch decides how many splits run (grid dim 2,
    ``KernelPair.splits``): fewer than SPLIT_K when the workspace cannot hold the partials."""
    splits = tl.num_programs(2)
    per = tl.cdiv(tl.cdiv(K, BLOCK_K), splits) * BLOCK_K
    k_lo = tl.program_id(2) * per
    return k_lo, tl.minimum(K, k_lo + per)


@triton.jit
def split_k_store(out_ptr, ws_ptr, tk_ptr, part, row, rn, M, N, stride_om, SPLIT_K: tl.constexpr):
    """``split_k_store_tile`` for one token's outputs ``part`` [BLOCK_N]."""
    split_k_store_tile(out_ptr, ws_ptr, tk_ptr, part[None, :], row + tl.arange(0, 1), rn, M, N, stride_om, SPLIT_K)


@triton.jit
def store_token_sums(out_ptr, ws_ptr, tk_ptr, y0, y1, y2, y3, row, rn, M, N, stride_om, BLOCK_B: tl.constexpr,
                     SPLIT_K: tl.constexpr):
    """Outputs [BLOCK_N] of tokens row .. row+BLOCK_B-1 (BLOCK_B in 1, 2, 4) from the 2-4 token decode paths that keep
    one accumulator per token; one token may have split K (``split_k_store``). Unused sums compile away."""
    if BLOCK_B == 1:
        split_k_store(out_ptr, ws_ptr, tk_ptr, y0, row, rn, M, N, stride_om, SPLIT_K)
    else:
        store_row(out_ptr, y0, row, rn, M, N, stride_om)
        store_row(out_ptr, y1, row + 1, rn, M, N, stride_om)
    if BLOCK_B == 4:
        store_row(out_ptr, y2, row + 2, rn, M, N, stride_om)
        store_row(out_ptr, y3, row + 3, rn, M, N, stride_om)


@triton.jit
def split_k_store_tile(out_ptr, ws_ptr, tk_ptr, part, rows, rn, M, N, stride_om, SPLIT_K: tl.constexpr):
    """Write outputs ``part`` [BLOCK_B, BLOCK_N] (float32) of split program_id(2). One split: straight to out.
    Otherwise each split stores its partial sums, takes a ticket from the tile's counter (acquire-release at GPU
    scope, after a block barrier so that every thread's stores precede it), and the last one sums the partials in
    split order — deterministic, one launch — writes out, and resets the counter for the next call. Partials are
    read through L2 (``.cg``): an SM's L1 may hold stale lines of a reused workspace."""
    splits = tl.num_programs(2)
    if SPLIT_K == 1:
        store_out(out_ptr, part, rows, rn, M, N, stride_om)
    elif splits == 1:
        store_out(out_ptr, part, rows, rn, M, N, stride_om)
    else:
        ok = (rows[:, None] < M) & (rn[None, :] < N)
        tl.store(ws_ptr + (tl.program_id(2) * M + rows[:, None]) * N + rn[None, :], part, mask=ok)
        tl.debug_barrier()
        tile = tl.program_id(1) * tl.num_programs(0) + tl.program_id(0)
        if tl.atomic_add(tk_ptr + tile, 1, sem="acq_rel", scope="gpu") == splits - 1:
            total = tl.zeros(part.shape, tl.float32)
            for s in range(splits):
                total += tl.load(ws_ptr + (s * M + rows[:, None]) * N + rn[None, :], mask=ok, other=0.0,
                                 cache_modifier=".cg")
            store_out(out_ptr, total, rows, rn, M, N, stride_om)
            tl.atomic_xchg(tk_ptr + tile, 0, sem="relaxed", scope="gpu")


@triton.jit
def store_out(out_ptr, acc, rows, cols, M, N, stride_om):
    mask = (rows[:, None] < M) & (cols[None, :] < N)
    tl.store(out_ptr + rows[:, None] * stride_om + cols[None, :], acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def grouped_pid(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """Program id → (tile row, tile col) in GROUP_M-row bands so neighbouring programs share weight tiles in L2
    (Triton matmul tutorial, "L2 cache optimizations")."""
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    per_band = GROUP_M * num_n
    band = pid // per_band
    first_m = band * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_band) % size_m
    pid_n = (pid % per_band) // size_m
    return pid_m, pid_n


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


class KernelPair:
    """The decode (GEMV), prefill (GEMM) and dequantize kernels of one format, with autotuned twins for CUDA."""

    def __init__(self, fmt: str, gemv, gemm, dequant, cols_per_acc: int = 1, split_k: dict | None = None,
                 dot_decode: bool = True):
        self.fmt, self.gemv, self.gemm, self.dequant = fmt, gemv, gemm, dequant
        self.split_k = split_k or {}  # {BLOCK_B: d}: that token block's decode path splits K when GROUP % d == 0
        self.dot_decode = dot_decode  # False: no padded tl.dot decode block (group_sparse_int4)
        self.prune_gemv = functools.partial(prune_gemv, cols_per_acc=cols_per_acc, dot=dot_decode)
        tune = {"cache_results": True, "do_bench": quick_bench}  # tuned configs persist in Triton's cache dir
        configs = gemv_configs((1, 2, 4, 16) if dot_decode else (1, 2, 4)) + split_k_configs(tuple(self.split_k))
        self.gemv_tuned = triton.autotune(configs=configs, key=GEMV_KEY,
                                          prune_configs_by={"early_config_prune": self.prune_gemv}, **tune)(gemv)
        self.gemm_tuned = triton.autotune(configs=gemm_configs(), key=GEMM_KEY,
                                          prune_configs_by={"early_config_prune": prune_gemm}, **tune)(gemm)
        self.pinned = False  # True: skip autotuning on CUDA, use GPU_PINNED (compute-sanitizer runs)

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
        path = bb in self.split_k and meta.get("GROUP", 0) % self.split_k[bb] == 0
        tiles = triton.cdiv(m, meta["BLOCK_B"]) * triton.cdiv(n, meta["BLOCK_N"])
        fits = split * m * n <= SPLIT_K_PARTIALS and tiles <= SPLIT_K_TILES
        return split if path and fits else 1

    @property
    def interpret(self) -> bool:
        return interpreting(self.gemv)

    def regime(self, m: int, regime: str | None, rules: Rules) -> str:
        """The caller's regime, or the choice of ``rules`` (kernels/select.py, the GPU's table) for ``m`` tokens."""
        if regime is None:
            return rules.choose(self.fmt, m)
        if regime not in REGIMES:
            raise UserInputError(f"regime '{regime}' is unknown; use one of {', '.join(REGIMES)} or None (auto)")
        return regime

    def run(self, args: tuple, m: int, n: int, consts: dict, regime: str, decode_max: int) -> None:
        """Launch over ``[m, n]`` outputs; ``args`` hold (..., M, N, K, stride_xm, stride_om, extra ints); a decode
        program takes at most ``decode_max`` tokens."""
        if regime == "gemv":
            tokens = min(m, decode_max)
            fixed = self._fixed(0)

            def grid(meta):
                return (triton.cdiv(n, meta["BLOCK_N"]), triton.cdiv(m, meta["BLOCK_B"]), self.splits(meta, m, n))

            launch(self.gemv, self.gemv_tuned, grid, (*args, m_bucket(tokens)), consts,
                   None if fixed is None else {**fixed, "BLOCK_B": batch_block(tokens)})
        else:

            def grid(meta):
                return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)

            launch(self.gemm, self.gemm_tuned, grid, (*args, m_bucket(m)), consts, self._fixed(1))

    def matmul(self, x: Tensor, call: Call, out: Tensor | None, regime: str | None) -> Tensor:
        """The launcher body every format shares: flatten x, allocate y, pick the regime, launch."""
        x2 = flatten_input(x, call.k, self.fmt, self.interpret)
        y = alloc_out(x, x2, call.n, out, self.fmt)
        m = x2.shape[0]
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
            args = (x2, *call.tensors, y, m, call.n, call.k, x2.stride(0), call.n, *call.extra)
            self.run(args, m, call.n, {**call.consts, "DOT_F32": dot_f32(x, self.interpret)}, regime,
                     rules.gemv_up_to[self.fmt])
        return y

    def run_dequant(self, args: tuple, n: int, cols: int, consts: dict) -> None:
        """Launch the dequantize kernel over an ``[n, cols]`` grid of tiles (cols: dense or kept columns)."""
        bn, bk = (8, 32) if self.interpret else (32, 128)
        self.dequant[(triton.cdiv(n, bn), triton.cdiv(cols, bk))](*args, **consts, BLOCK_N=bn, BLOCK_K=bk)


SPLIT_K_PARTIALS = 1 << 22  # float32 partials in the workspace (16 MB): 8 splits x 16 tokens x 28672 outputs
SPLIT_K_TILES = 1 << 18  # ticket counters: output tiles of one split launch
_split_k: dict = {}


def split_k_buffers(device: torch.device) -> tuple[Tensor, Tensor]:
    """(partials, tickets) for split-K decode, allocated once per device (17 MB) and shared by every launch on it,
    as launches on one stream run in order: float32 partial sums (splits x tokens x outputs; ``KernelPair.splits``
    does not split a launch they would overflow), and the int32 counters the programs of one output tile take
    tickets from. The last program of a tile sums the partials and puts its counter back to zero, so the counters
    stay zero between calls and CUDA-graph replays, and a captured graph keeps valid addresses."""
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


@triton.jit
def store_tile(w_ptr, w, rn, rk, N, K):
    """W[rn, rk] = w for the dequantize kernels (dense row-major [N, K] output)."""
    mask = (rn[:, None] < N) & (rk[None, :] < K)
    tl.store(w_ptr + rn[:, None] * K + rk[None, :], w.to(w_ptr.dtype.element_ty), mask=mask)


@triton.jit
def nibbles(byte):
    """Bytes [A, B] (int32) → 4-bit codes [A, 2B], low nibble first (docs/FORMATS.md). Bytes are loaded once,
    contiguously, and split in registers by a broadcast shift + reshape."""
    shifts = tl.arange(0, 2) * 4
    return tl.reshape((byte[:, :, None] >> shifts[None, None, :]) & 0xF, (byte.shape[0], 2 * byte.shape[1]))


@triton.jit
def per_group(ptr, rows, ok, k0, NG, other, GROUP: tl.constexpr, BLOCK_K: tl.constexpr):
    """Per-group values ``ptr[rows, g]`` (row stride NG, g = column // GROUP) for the groups that columns
    k0 .. k0+BLOCK_K touch, in compact form for ``expand_groups``: [BLOCK_N, 1] when the tile sits in one group,
    [BLOCK_N, BLOCK_K/GROUP] when it spans several, [BLOCK_N, BLOCK_K] (one per column) when GROUP is not a power of
    two. Arithmetic on the compact form (SpQR's second level) costs one op per group instead of per column."""
    if (GROUP & (GROUP - 1)) != 0:
        g = (k0 + tl.arange(0, BLOCK_K)) // GROUP
        return tl.load(ptr + rows[:, None] * NG + g[None, :], mask=ok[:, None] & (g[None, :] < NG), other=other)
    elif GROUP >= BLOCK_K:
        return tl.load(ptr + rows * NG + k0 // GROUP, mask=ok, other=other)[:, None]  # callers keep k0 < K
    else:
        g = k0 // GROUP + tl.arange(0, BLOCK_K // GROUP)
        return tl.load(ptr + rows[:, None] * NG + g[None, :], mask=ok[:, None] & (g[None, :] < NG), other=other)


@triton.jit
def expand_groups(v, GROUP: tl.constexpr, BLOCK_K: tl.constexpr):
    """``per_group``'s compact values, broadcastable to [BLOCK_N, BLOCK_K] (a register broadcast, no loads)."""
    if (GROUP & (GROUP - 1)) == 0 and GROUP < BLOCK_K:
        v = tl.broadcast_to(v[:, :, None], (v.shape[0], BLOCK_K // GROUP, GROUP))
        return tl.reshape(v, (v.shape[0], BLOCK_K))
    else:
        return v


@triton.jit
def per_column(ptr, rows, ok, k0, NG, other, GROUP: tl.constexpr, BLOCK_K: tl.constexpr):
    """Per-group values for columns k0 .. k0+BLOCK_K of ``rows``, broadcastable to [BLOCK_N, BLOCK_K]: one load per
    row when the tile sits in one group, one per group and a register broadcast when it spans several, one per
    column when GROUP is not a power of two."""
    return expand_groups(per_group(ptr, rows, ok, k0, NG, other, GROUP, BLOCK_K), GROUP, BLOCK_K)


@triton.jit
def two_four_expand(c0, c1, nib, fill):
    """Kept values (c0, c1) of each group of 4 [A, G] at positions (nib & 3, nib >> 2) → dense [A, 4G], ``fill``
    at the two pruned positions."""
    pos = tl.arange(0, 4)[None, None, :]
    dense = tl.where(pos == (nib & 3)[:, :, None], c0[:, :, None],
                     tl.where(pos == (nib >> 2)[:, :, None], c1[:, :, None], fill))
    return tl.reshape(dense, (c0.shape[0], 4 * c0.shape[1]))


@triton.jit
def load_rows(ptr, rn, N, start, width, row_len, other, COLS: tl.constexpr):
    """ptr[rn, start .. start+COLS] of a row-major [N, row_len] tensor, masked to ``width`` valid columns."""
    cols = start + tl.arange(0, COLS)
    mask = (rn[:, None] < N) & (cols[None, :] < width)
    return tl.load(ptr + rn[:, None] * row_len + cols[None, :], mask=mask, other=other)
