"""group_sparse_int4's dense-column walk (kernels/_kept_map.py): the kept map against a direct count, and the three
kernels that walk it — prefill GEMM, the 5-16 token tl.dot decode path and the dequantize kernel — against the
float64 oracle and ``formats.group_sparse_int4.unpack``, on shapes that stress it: a bitmap of several words (64
groups), a group wider than the interpreter's 32-column K step, and a K that ends on half a step."""
from __future__ import annotations

import pytest
import torch

from packers import random_qw

from llmprune.formats import group_sparse_int4 as gqsa_format

TOLERANCE = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float32: 1e-5}
SHAPES = [(48, 16), (1024, 16), (192, 64), (128, 32)]  # (K, group)
N = 20


def packed_weight(k: int, group: int, dtype: torch.dtype, seed: int, n: int = N):
    qw = random_qw(n, k, group, dtype, seed=seed, pattern="groups", keep_groups=max(1, k // group // 2))
    return qw, gqsa_format.pack(qw, dtype=str(dtype).removeprefix("torch."))


def rel_err(y: torch.Tensor, oracle: torch.Tensor) -> float:
    return float((y.to(torch.float64) - oracle).abs().max() / oracle.abs().max())


def test_kept_map_counts_like_a_direct_walk():
    """Bit b of word w is set iff the row keeps group 32w + b (bit 31 too: negative int32 words), and ``base`` is
    the number of kept groups before 32w, for 70 groups (three words, the last one partial)."""
    from llmprune.kernels._kept_map import kept_map

    groups, gen = 70, torch.Generator().manual_seed(0)
    rows = [torch.randperm(groups, generator=gen)[:k].sort().values for k in (35, 35, 35)]
    rows[1] = torch.cat([torch.arange(0, 32), torch.tensor([40, 50, 69])])  # word 0 full: bit 31 set
    gi = torch.stack(rows).to(torch.int16)
    kmap = kept_map(gi, groups)
    assert kmap.shape == (3, 3, 2) and kmap.dtype == torch.int32
    for r, kept in enumerate(rows):
        kept = set(kept.tolist())
        for w in range(3):
            bits = int(kmap[r, w, 0]) & 0xFFFFFFFF
            assert bits == sum(1 << b for b in range(32) if 32 * w + b in kept)
            assert int(kmap[r, w, 1]) == sum(1 for g in kept if g < 32 * w)
    assert int(kmap[1, 0, 0]) == -1  # all 32 bits


def test_kept_map_is_built_once_per_tensor_and_rebuilt_after_an_in_place_change():
    from llmprune.kernels._kept_map import kept_map

    gi = torch.tensor([[0, 2], [1, 3]], dtype=torch.int16)
    first = kept_map(gi, 4)
    assert kept_map(gi, 4) is first
    gi[0, 1] = 3
    rebuilt = kept_map(gi, 4)
    assert rebuilt is not first and int(rebuilt[0, 0, 0]) == 0b1001


@pytest.mark.parametrize("k,group", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_prefill_gemm_walks_the_dense_columns(k, group, dtype):
    from llmprune.kernels.group_sparse_int4 import group_sparse_int4_matmul

    qw, packed = packed_weight(k, group, dtype, seed=k + group)
    x = torch.randn(19, k, generator=torch.Generator().manual_seed(k)).to(dtype)
    out = torch.full((19, N), float("nan"), dtype=dtype)
    group_sparse_int4_matmul(x, packed, out=out, regime="gemm")
    oracle = x.to(torch.float64) @ qw.dequantize(torch.float32).to(torch.float64).T
    assert not torch.isnan(out).any() and rel_err(out, oracle) <= TOLERANCE[dtype]


@pytest.mark.parametrize("k,group", SHAPES)
@pytest.mark.parametrize("dtype,rows", [(torch.float16, 64), (torch.float16, 16), (torch.float32, 16)], ids=str)
@pytest.mark.parametrize("split", [1, 2])
def test_decode_tl_dot_block_walks_the_dense_columns(k, group, dtype, rows, split, monkeypatch):
    """5-16 tokens on the padded tl.dot block (forced: the shipped table sends GQSA's 5+ tokens to the prefill
    kernel until a GPU run times the block): 64-row fp16 tiles dequantize in half precision, the others in float32;
    K split among ``split`` programs. N = 80 leaves a ragged second row tile."""
    from llmprune.kernels import _launch
    from llmprune.kernels.group_sparse_int4 import group_sparse_int4_matmul

    monkeypatch.setattr(_launch, "batch_block", lambda m: 16)
    monkeypatch.setattr(_launch, "GEMV_FIXED", {"BLOCK_N": rows, "BLOCK_K": 32, "SPLIT_K": split})
    qw, packed = packed_weight(k, group, dtype, seed=3 * k + group, n=80)
    x = torch.randn(11, k, generator=torch.Generator().manual_seed(group)).to(dtype)
    out = torch.full((11, 80), float("nan"), dtype=dtype)
    group_sparse_int4_matmul(x, packed, out=out, regime="gemv")
    oracle = x.to(torch.float64) @ qw.dequantize(torch.float32).to(torch.float64).T
    assert not torch.isnan(out).any() and rel_err(out, oracle) <= TOLERANCE[dtype]
    if dtype == torch.float16:  # each weight is the reference's rounded once to fp16, dropped ones exactly 0
        dense16 = qw.dequantize(torch.float32).to(torch.float16).to(torch.float64)
        assert rel_err(out, x.to(torch.float64) @ dense16.T) <= 1e-3


@pytest.mark.parametrize("k,group", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)
def test_dequantize_walk_writes_every_column_exactly(k, group, dtype):
    """The dense-walk dequantize kernel writes dropped groups as zeros itself (the buffer starts as NaN) and every
    kept weight equal to ``unpack`` after rounding."""
    from llmprune.kernels.group_sparse_int4 import group_sparse_int4_dequantize

    _, packed = packed_weight(k, group, dtype, seed=k * group)
    out = torch.full((N, k), float("nan"), dtype=dtype)
    w = group_sparse_int4_dequantize(packed, dtype, k, out)
    assert w.data_ptr() == out.data_ptr()
    assert torch.equal(w, gqsa_format.unpack(packed, k).to(dtype))


@pytest.mark.parametrize("k,group", [(72, 8), (96, 24)])
def test_groups_off_the_walk_take_16_tokens_in_gathered_sub_blocks(k, group, monkeypatch):
    """Groups the kept map cannot walk (not a power of two >= 16) still run a 16-token decode block (the autotuner
    may pick it): x is gathered per code for four sub-blocks of 4 tokens, the last one partly masked."""
    from llmprune.kernels import _launch
    from llmprune.kernels.group_sparse_int4 import group_sparse_int4_matmul

    monkeypatch.setattr(_launch, "batch_block", lambda m: 16)
    qw, packed = packed_weight(k, group, torch.float32, seed=group)
    x = torch.randn(14, k, generator=torch.Generator().manual_seed(1))
    out = torch.full((14, N), float("nan"))
    group_sparse_int4_matmul(x, packed, out=out, regime="gemv")
    oracle = x.to(torch.float64) @ qw.dequantize(torch.float32).to(torch.float64).T
    assert not torch.isnan(out).any() and rel_err(out, oracle) <= TOLERANCE[torch.float32]


@pytest.mark.parametrize("kept,align", [(24, 8), (12, 4), (7, 1)])  # like KG = 344 = 8 x 43 at K = 11008
@pytest.mark.parametrize("tokens", [1, 2, 4, 16])
def test_kept_groups_not_a_multiple_of_16_reach_the_kernels_with_their_alignment(kept, align, tokens, monkeypatch):
    """KG off the multiples of 16 (which Triton specializes) is passed with KG_ALIGN, the largest power of two up
    to 16 dividing it, and every path (1-4 token loops, prefill) reads all KG kept groups: an alignment larger than
    the true one would cut each row's kept stream short in the kernels' (KG // KG_ALIGN) * KG_ALIGN."""
    from llmprune.kernels.group_sparse_int4 import KERNELS, group_sparse_int4_matmul

    seen, run = [], KERNELS.run
    monkeypatch.setattr(KERNELS, "run", lambda *a: (seen.append(a[3]["KG_ALIGN"]), run(*a))[1])
    qw, packed = packed_weight(32 * kept, 16, torch.float32, seed=kept)
    assert packed["group_idx"].shape[1] == kept
    x = torch.randn(tokens, 32 * kept, generator=torch.Generator().manual_seed(tokens))
    out = torch.full((tokens, N), float("nan"))
    group_sparse_int4_matmul(x, packed, out=out)
    oracle = x.to(torch.float64) @ qw.dequantize(torch.float32).to(torch.float64).T
    assert seen == [align] and not torch.isnan(out).any() and rel_err(out, oracle) <= TOLERANCE[torch.float32]
