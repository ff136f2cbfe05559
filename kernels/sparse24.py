"""Kernels for ``sparse24``: 2:4 sparse 16-bit weights (2 kept in every 4).

Layout (docs/FORMATS.md): ``values: [N, K/2]`` fp16/bf16 — the kept values in column order; ``meta: [N, K/8] uint8``
— kept positions p0 < p1 of column group g as the nibble ``p0 | p1 << 2``, group 2j in the low nibble of byte j.
Worked example: columns 0..3 = [a, 0, b, 0] give p0 = 0, p1 = 2, nibble 0b1000 = 8; values row starts [a, b].

Two paths, as issue 6 asks: PyTorch's semi-structured sparse tensor (cuSPARSELt/CUTLASS sparse tensor cores), which
wins on large GEMMs (~1.7-2x over dense) but is ~0.1x at batch 1, and Triton kernels that read only ``values`` and
``meta`` (9/16 of the dense bytes, so up to ~1.8x at batch 1). ``semi_structured_weight`` converts a packed weight
once (keep the result next to the module, or in the packed dict as ``"semi_structured"`` so ``sparse24_matmul``
takes it for large batches); ``semi_structured_matmul`` runs it; kernels/select.py says which path is faster.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from torch import Tensor

from llmprune.errors import UserInputError
from llmprune.formats.sparse24 import matmul_ref as reference  # noqa: F401  (the oracle the tests compare against)

from ._configs import launched
from ._launch import (  # noqa: F401 (supports: dispatch hook)
    FLOATS, Call, check_packed, dense_buffer, expect_shape, KernelPair, row_slice, supports,
)
from ._tiles import (
    dot_acc, grouped_pid, load_rows, load_x, matvec_finish, matvec_init, matvec_step, nibbles, store_out, store_tile,
    two_four_expand,
)
from .select import device_rules


@triton.jit
def _sparse24_tile(v_ptr, m_ptr, rn, k0, N, K, BLOCK_K: tl.constexpr):
    """Dense W[rn, k0 : k0+BLOCK_K] in float32, zero at pruned columns (values and meta loaded contiguously)."""
    v = load_rows(v_ptr, rn, N, k0 // 2, K // 2, K // 2, 0.0, BLOCK_K // 2).to(tl.float32)
    v0, v1 = tl.split(tl.reshape(v, (v.shape[0], BLOCK_K // 4, 2)))
    nib = nibbles(load_rows(m_ptr, rn, N, k0 // 8, K // 8, K // 8, 0, BLOCK_K // 8).to(tl.int32))
    return two_four_expand(v0, v1, nib, 0.0)


@launched
def _sparse24_gemv_kernel(x_ptr, v_ptr, m_ptr, out_ptr, M, N, K, stride_xm, stride_om, M_BUCKET,
                          DOT_F32: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                          STAGES: tl.constexpr = None):
    """Decode: BLOCK_N rows per program streaming values and meta; the skipped half of W is never read. STAGES
    pipelines the 1-4 token loop (``_configs``)."""
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rb = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    acc = matvec_init(BLOCK_B, BLOCK_N, BLOCK_K)
    for k0 in tl.range(0, K, BLOCK_K, num_stages=STAGES):
        w = _sparse24_tile(v_ptr, m_ptr, rn, k0, N, K, BLOCK_K)
        acc = matvec_step(acc, load_x(x_ptr, rb, k0 + tl.arange(0, BLOCK_K), M, K, stride_xm), w, BLOCK_B, DOT_F32)
    store_out(out_ptr, matvec_finish(acc, BLOCK_B), rb, rn, M, N, stride_om)


@launched
def _sparse24_gemm_kernel(x_ptr, v_ptr, m_ptr, out_ptr, M, N, K, stride_xm, stride_om, M_BUCKET,
                          DOT_F32: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Prefill with dense tensor cores on the rebuilt tile (the semi-structured path is the sparse-MMA one)."""
    pid_m, pid_n = grouped_pid(M, N, BLOCK_M, BLOCK_N, 8)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for k0 in range(0, K, BLOCK_K):
        w = _sparse24_tile(v_ptr, m_ptr, rn, k0, N, K, BLOCK_K)
        acc = dot_acc(load_x(x_ptr, rm, k0 + tl.arange(0, BLOCK_K), M, K, stride_xm), tl.trans(w), acc, DOT_F32)
    store_out(out_ptr, acc, rm, rn, M, N, stride_om)


@triton.jit
def _sparse24_dequant_kernel(w_ptr, v_ptr, m_ptr, N, K, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """The dense weight tile by tile (zeros at pruned columns), for the large-batch ``dense`` regime."""
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    k0 = tl.program_id(1) * BLOCK_K
    store_tile(w_ptr, _sparse24_tile(v_ptr, m_ptr, rn, k0, N, K, BLOCK_K), rn, k0 + tl.arange(0, BLOCK_K), N, K)


KERNELS = KernelPair("sparse24", _sparse24_gemv_kernel, _sparse24_gemm_kernel, _sparse24_dequant_kernel)


def _checked(packed: dict, device: torch.device) -> tuple[int, int]:
    """(N, K) of a well-formed sparse24 packed weight on ``device``."""
    check_packed(packed, {"values": FLOATS, "meta": (torch.uint8,)}, device, "sparse24")
    n, k = packed["values"].shape[0], packed["values"].shape[1] * 2
    if k % 8:
        raise UserInputError(f"sparse24 kernel: {k} columns is not a multiple of 8; 2:4 formats need in % 8 == 0")
    expect_shape(packed["meta"], (n, k // 8), "meta", "sparse24")
    return n, k


def sparse24_dequantize(packed: dict, dtype: torch.dtype, out: Tensor | None = None) -> Tensor:
    """The dense weight ``[N, K]`` in ``dtype`` (equal to ``formats.sparse24.unpack`` cast to ``dtype``), written
    into ``out`` when given."""
    v = packed["values"]
    n, k = _checked(packed, v.device)
    w = dense_buffer(out, n, k, dtype, v.device)
    KERNELS.run_dequant((w, v, packed["meta"], n, k), n, k, {})
    return w


def sparse24_matmul(x: Tensor, packed: dict, *, out: Tensor | None = None, regime: str | None = None) -> Tensor:
    """``x @ W.T`` for a ``sparse24`` packed weight with the Triton kernels; x ``[..., K]`` → ``[..., N]``.

    ``regime``: None follows kernels/select.py; "gemv", "gemm", "dense" or "semi_structured" force one.
    ``out``: optional output. When ``packed`` also holds ``"semi_structured"`` (``semi_structured_weight(packed)``,
    kept by the caller), batches of the dispatch table's ``semi_from`` tokens and more (kernels/select.py, measured
    per GPU) take PyTorch's sparse tensor cores.
    """
    call = prepare(packed, x.device, x.shape[-1])
    if regime == "semi_structured":
        semi = packed.get("semi_structured")
        if semi is None:
            raise UserInputError("regime 'semi_structured' needs packed['semi_structured'] = "
                                 "semi_structured_weight(packed); build it once next to the layer")
        y = semi_structured_matmul(x, semi)
        return y if out is None else out.copy_(y)
    return KERNELS.matmul(x, call, out, regime)


def prepare(packed: dict, device: torch.device, k: int, semi_structured: bool = False) -> Call:
    """The checked launch on ``device``, built once per ``PackedLinear`` (see ``int4.prepare``; K is stored).
    ``semi_structured``: build PyTorch's semi-structured weight here (what ``dispatch.use_semi_structured`` asks of a
    layer) unless ``packed`` carries one; with one, batches from the table's ``semi_from`` tokens use it."""
    n, k = _checked(packed, device)
    semi = packed.get("semi_structured")
    if semi is None and semi_structured:
        semi = semi_structured_weight(packed)
    start = None if semi is None else device_rules(device).semi_from
    library = None if start is None else (start, functools.partial(semi_structured_matmul, weight_ss=semi))
    return Call((packed["values"], packed["meta"]), n, k, {}, lambda dtype: sparse24_dequantize(packed, dtype),
                dequantize_rows=lambda r0, r1, buf: sparse24_dequantize(row_slice(packed, ("values", "meta"), r0, r1),
                                                                        buf.dtype, buf), library=library)


def semi_structured_weight(packed: dict) -> Tensor:
    """The weight as PyTorch's ``SparseSemiStructuredTensor`` (CUDA, fp16/bf16), built once from the packed bytes.

    Why a separate step: the conversion compresses a dense copy, which must not happen per forward call.
    """
    from torch.sparse import to_sparse_semi_structured

    values = packed["values"]
    if values.device.type != "cuda" or values.dtype not in (torch.float16, torch.bfloat16):
        raise UserInputError("semi-structured 2:4 needs fp16/bf16 weights on CUDA; use sparse24_matmul instead")
    return to_sparse_semi_structured(sparse24_dequantize(packed, values.dtype))


def semi_structured_matmul(x: Tensor, weight_ss: Tensor) -> Tensor:
    """``x @ W.T`` with the semi-structured weight (cuSPARSELt/CUTLASS); needs a batch that is a multiple of 8
    after padding, which ``torch.nn.functional.linear`` on that tensor handles."""
    return torch.nn.functional.linear(x, weight_ss)
