"""The autotuner's search space for the packed-format kernels: decode (GEMV) and prefill (GEMM) tile configs, the
pruning that keeps those suiting a launch, the autotune keys, and the fixed configs of the interpreter and of
compute-sanitizer runs. Why each shape is in the list is measured in tests/kernels/instruction_mix.py
(instructions per weight byte of each K loop) and, on a GPU, by benchmarks/kernels.py.
"""
from __future__ import annotations

import triton


TOKEN_BLOCKS = (1, 2, 4, 16)  # the decode kernel's BLOCK_B: FMA blocks 1, 2 and 4, the padded tl.dot block 16
DOT_BLOCK = TOKEN_BLOCKS[-1]


def block_tokens(m: int) -> int:
    """Tokens one decode program takes of an ``m``-token launch: at most the largest token block (more run as
    several blocks). A decode launch is keyed by this count (its ``m_bucket``)."""
    return min(m, DOT_BLOCK)


def batch_block(m: int) -> int:
    """BLOCK_B for the decode kernel's fixed configs: 1, 2 or 4 use CUDA-core FMAs; 16 pads the batch for one
    tl.dot. The autotuned launch also tries 16 for 2-4 tokens (``decode_blocks``)."""
    return next((b for b in TOKEN_BLOCKS if m <= b), DOT_BLOCK)


def decode_blocks(bucket: int) -> set:
    """BLOCK_B candidates of an autotuned decode launch of ``bucket`` (``m_bucket``) tokens: the FMA block that holds
    them and, for 2-4 tokens, also the padded block 16: the autotuner times both. Statically the tl.dot path issues
    fewer instructions per weight byte from 2 tokens (int4 12.4 vs 17.7-23.4, tests/kernels/instruction_mix.py) but
    adds shared-memory round trips and barriers, so timings decide. One token stays on the FMA paths (8.5 vs 12.4);
    5 or more take 16."""
    fma = batch_block(bucket)
    return {fma, DOT_BLOCK} if 1 < fma < DOT_BLOCK else {fma}


def m_bucket(m: int) -> int:
    """Autotune key for the batch: the next power of two, so prefill lengths share tuned configs (plain int
    arithmetic: ``triton.next_power_of_2`` is a jit helper that costs microseconds per launch)."""
    return 1 << (max(int(m), 1) - 1).bit_length()


def gemv_configs(blocks=TOKEN_BLOCKS) -> list:
    """Row-block configs for decode, one set per token block: small BLOCK_N gives enough programs to fill the SMs at
    N = 4096 for one token; the padded tl.dot path (16 tokens) wants wide BLOCK_N, since every program re-reads its
    [16, K] slice of x (``prune_gemv`` keeps those that suit the launch)."""
    shapes = [(4, 512, 2), (8, 256, 4), (8, 512, 4), (16, 256, 4), (16, 128, 4), (32, 128, 8), (64, 64, 8),
              (64, 128, 4), (64, 256, 8), (128, 64, 4), (128, 128, 8),  # wide rows: fewer re-reads of x at 16 tokens
              (8, 128, 4), (16, 64, 4), (32, 64, 8)]  # small tiles whose 2-4 token accumulators fit in registers
    return [triton.Config({"BLOCK_B": b, "BLOCK_N": bn, "BLOCK_K": bk, **stages}, num_warps=w, num_stages=2)
            for b in blocks for bn, bk, w in shapes for stages in pipelining(b)]


PIPELINE_STAGES = 4  # steps of an FMA decode loop in flight per program when pipelined (tl.range's num_stages)


def pipelining(block: int) -> tuple[dict, ...]:
    """The ``STAGES`` variants of a decode config of token block ``block``. Triton's ``num_stages`` (the config's)
    pipelines only loads that feed a tl.dot, which the 16-token block has and the 1-4 token FMA loops do not: those
    issued each step's loads and waited for them, one step in flight per warp (no load before the loop in their
    sm_90 SASS; the H100 measured int4 at 25% of copy bandwidth for 4096x4096, one token, eded9f2). Their loops take
    ``tl.range(..., num_stages=STAGES)``: with STAGES = 4, three further steps' codes, statistics and x stream into
    shared memory (cp.async) or registers while one is computed, for 2-25% more loop instructions and 3-32 KB more
    shared memory at 16x256 (tests/kernels/instruction_mix.py --pipelined; 3 stages made ptxas spill in spqr's
    2-token loop on triton 3.9). Whether that wins depends on occupancy (tile, split, shape), so the FMA blocks offer
    both and the autotuner times them."""
    return ({}, {"STAGES": PIPELINE_STAGES}) if block < DOT_BLOCK else ({},)


SPLIT_K = (2, 4, 8)

BIG_TILES = [(64, 256, 4), (128, 128, 4), (256, 128, 8), (32, 256, 4)]  # 64 B of int4 codes per thread per step


def split_k_configs(blocks) -> list:
    """Configs for the token blocks whose decode path splits K (int4, sparse24_int4, group_sparse_int4): wide tiles
    (fewer loop instructions per byte, tests/kernels/instruction_mix.py) are too few programs for N = 4096 on 132 SMs
    unless K is split among SPLIT_K programs as well."""
    return [triton.Config({"BLOCK_B": b, "BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": s, **stages}, num_warps=w,
                          num_stages=2)
            for b in blocks for bn, bk, w in BIG_TILES for s in (1, *SPLIT_K) for stages in pipelining(b)]


def gemm_configs() -> list:
    """Tile configs for prefill in the spirit of Triton's matmul tutorial (grouped ordering, pipelined K loop). The
    256-token tile serves 256+ token batches (``prune_gemm``): it doubles the tensor-core work per dequantized
    weight tile for ~10% more loop instructions (int4 253 → 278 per thread on sm_90, no spills for int4, sparse24,
    sparse24_int4, group_sparse_int4), the lever on the large-batch gap to cuBLAS, where dequantization competes
    with the MMAs."""
    shapes = [(16, 64, 128, 4, 3), (32, 64, 64, 4, 4), (64, 64, 64, 4, 4), (64, 128, 64, 8, 3),
              (128, 128, 64, 8, 3), (128, 64, 64, 8, 4), (32, 128, 64, 4, 4), (256, 128, 64, 8, 3)]
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=st)
            for bm, bn, bk, w, st in shapes]


ACC_PER_THREAD = 32  # fp32 accumulator registers per thread for 2-4 tokens; more spilled on sm_90 (instruction_mix)


GATHERED_X_STAGE = 64 * 256  # activations per step (BLOCK_B x BLOCK_N x BLOCK_K) a pipelined loop may stage when
# it gathers x per row (GQSA): 4 stages of them then take 138 KB of shared memory on sm_90; twice as many exceed 227 KB


def prune_gemv(configs, named_args, cols_per_acc: int = 1, gathers_x: bool = False, **kwargs) -> list:
    """The configs of the launch's token blocks (``decode_blocks`` of its M_BUCKET). The padded tl.dot decode path
    (BLOCK_B = 16) needs BLOCK_N >= 16 (tl.dot's minimum tile); the 2-4 token FMA path keeps a
    [BLOCK_B, BLOCK_N, BLOCK_K / cols_per_acc] accumulator (int4's code-word path sums 8 columns per entry), so drop
    tiles that would not fit in registers; a format whose FMA loops gather x per row (``gathers_x``) stages a
    [BLOCK_B, BLOCK_N, BLOCK_K] block of x per pipelined step, so drop pipelined tiles that would not fit in shared
    memory."""
    blocks = decode_blocks(named_args.get("M_BUCKET", 1))

    def keep(c) -> bool:
        bb, bn, bk = c.kwargs["BLOCK_B"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"]
        if bb not in blocks:
            return False
        if bb == DOT_BLOCK:
            return bn >= 16
        if gathers_x and "STAGES" in c.kwargs and bb * bn * bk > GATHERED_X_STAGE:
            return False
        return bb == 1 or bb * bn * bk // cols_per_acc <= ACC_PER_THREAD * 32 * c.num_warps

    return [c for c in configs if keep(c)]


def prune_gemm(configs, named_args, **kwargs) -> list:
    """Skip row tiles far taller than the batch (they only multiply padding)."""
    limit = max(16, named_args.get("M_BUCKET", 1 << 30))
    return [c for c in configs if c.kwargs["BLOCK_M"] <= limit] or configs[:1]


def quick_bench(fn, quantiles=None):
    """Autotuning timer: fewer repetitions than Triton's default (each config still runs >= 25 ms)."""
    return triton.testing.do_bench(fn, warmup=5, rep=25, quantiles=quantiles)


def launched(fn):
    """``triton.jit`` for the kernels a ``KernelPair`` launches, with the token counts not specialized: Triton would
    otherwise compile ints equal to 1 or divisible by 16 separately. M_BUCKET is only the autotuner's key (the bodies
    never read it): specialized, every config would compile three times over the decode buckets 1, 2-8 and 16. M
    only masks token rows (no vector access runs along it): specialized, the 16-token decode configs would compile
    for 2-15 tokens and again for 16, and the benchmark's first autotuning would compile 611 kernels per dtype
    instead of 508; unspecialized, the launch runs the very code that tests/kernels/instruction_mix.py and
    compile_check.py analyze (they compile M as a plain int)."""
    return triton.jit(fn, do_not_specialize=["M_BUCKET", "M"])


GEMV_KEY = ["N", "K", "M_BUCKET"]

GEMM_KEY = ["N", "K", "M_BUCKET"]
GEMV_FIXED = {"BLOCK_N": 16, "BLOCK_K": 32}  # interpreter: one small config (valid on GPUs too), several K steps
GEMM_FIXED = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 32}
# compute-sanitizer runs and compile_check's default: 64-row decode tiles and 32-row prefill tiles, so the fp16
# half-precision tile paths (int4, sparse24_int4: decode tiles of >= 64 rows, int4 prefill tiles of < 64) are
# covered; a 64-column K step keeps every format's 2-4 token accumulators in registers (256 spilled up to 5.7 KB).
# Pinned and interpreted 1-4 token launches take the pipelined loop (``pipelining``), the one with async copies.
GPU_PINNED = ({"BLOCK_N": 64, "BLOCK_K": 64, "num_warps": 4}, {"BLOCK_M": 32, "BLOCK_N": 64, "BLOCK_K": 64})
