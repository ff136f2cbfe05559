"""Every kernel and regime under Triton's interpreter against the format's torch reference and a float64 oracle.

Inputs are random and non-zero; the output buffer is filled with NaN first, so a tile the kernel forgets to write
fails the test. Shapes are tiny (the interpreter runs each program in numpy) but ragged: N = 20 is not a multiple of
BLOCK_N and K = 72 not a multiple of BLOCK_K, so the masks are exercised.
"""
from __future__ import annotations

import importlib

import pytest
import torch

from packers import PACKERS, dense_oracle, random_qw, random_spqr_qw

# Max |error| relative to max |oracle|: fp16/bf16 outputs are rounded once (plus the dequantized tile on the
# tensor-core path); the float32 path must agree to accumulation-order noise.
TOLERANCE = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float32: 1e-5}
DTYPES = [torch.float16, torch.bfloat16, torch.float32]
FORMATS = ["int4", "sparse24", "sparse24_int4", "group_sparse_int4", "spqr"]
# (tokens, regime, K, group): regime None is kernels/select.py's choice (gemm at 20 tokens, dense at 600); 5 tokens
# take the padded tl.dot decode path; "dense" is the dequantize kernel + torch.mm. Groups 8/16/32 < BLOCK_K (32 under
# the interpreter) < 64 and the non-power-of-two 24 take the three ways statistics are loaded; one token takes the
# formats' single-token decode paths (int4: 32-bit code words when the group is a multiple of 8, group 4 takes the
# generic tile; sparse24_int4: x picked at the kept positions by selects, from 32-bit code words and 16-bit metadata
# words when the group is a multiple of 16). 3 tokens at K = 80 end on a half-masked step of 16-column words.
CASES = [(1, "gemv", 72, 8), (3, "gemv", 72, 8), (5, "gemv", 96, 16), (20, None, 96, 16), (2, "gemm", 64, 32),
         (3, "dense", 72, 8), (600, None, 64, 16), (1, "gemv", 128, 64), (2, "gemm", 96, 24), (1, "gemv", 96, 24),
         (1, "gemv", 72, 4), (2, "gemv", 96, 16), (3, "gemv", 80, 16)]
N = 20


def make(fmt: str, k: int, group: int, dtype: torch.dtype, seed: int):
    """(QuantizedWeight, packed dict from llmprune.formats.<fmt>.pack)."""
    formats = importlib.import_module(f"llmprune.formats.{fmt}")
    name = str(dtype).removeprefix("torch.")
    if fmt == "spqr":
        qw = random_spqr_qw(N, k, dtype, seed=seed, group=group)
    elif fmt == "group_sparse_int4":
        qw = random_qw(N, k, group, dtype, seed=seed, pattern="groups", keep_groups=k // group // 2)
    else:
        qw = random_qw(N, k, group, dtype, seed=seed, pattern="2:4" if fmt.startswith("sparse24") else "dense")
    return qw, formats.pack(qw, dtype=name)


def rel_err(y: torch.Tensor, oracle: torch.Tensor) -> float:
    return float((y.to(torch.float64) - oracle.to(torch.float64)).abs().max() / oracle.abs().max())


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("tokens,regime,k,group", CASES)
def test_kernel_matches_reference_and_float64_oracle(fmt, dtype, tokens, regime, k, group):
    kernel = importlib.import_module(f"llmprune.kernels.{fmt}")
    qw, packed = make(fmt, k, group, dtype, seed=tokens * 7 + k)
    x = torch.randn(tokens, k, generator=torch.Generator().manual_seed(k)).to(dtype)
    out = torch.full((tokens, N), float("nan"), dtype=dtype)
    y = getattr(kernel, f"{fmt}_matmul")(x, packed, out=out, regime=regime)
    assert y.data_ptr() == out.data_ptr() and not torch.isnan(y).any()
    oracle = x.to(torch.float64) @ qw.dequantize(torch.float32).to(torch.float64).T
    if fmt == "sparse24":  # the 16-bit format stores the weights themselves in the activation dtype
        oracle = dense_oracle(x, qw, dtype)
    assert rel_err(y, oracle) <= TOLERANCE[dtype]
    assert rel_err(y, kernel.reference(x, packed)) <= TOLERANCE[dtype]


@pytest.mark.parametrize("fmt", FORMATS)
def test_kernel_accepts_batched_and_strided_input(fmt):
    """x [2, 3, K] with a non-unit stride along K (a slice) gives the reference result with shape [2, 3, N]."""
    kernel = importlib.import_module(f"llmprune.kernels.{fmt}")
    qw, packed = make(fmt, 64, 16, torch.float16, seed=3)
    wide = torch.randn(2, 3, 128, generator=torch.Generator().manual_seed(1)).to(torch.float16)
    x = wide[..., ::2]
    y = getattr(kernel, f"{fmt}_matmul")(x, packed)
    assert y.shape == (2, 3, N)
    assert rel_err(y, kernel.reference(x.contiguous(), packed)) <= TOLERANCE[torch.float16]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)
def test_chunked_regime_equals_oracle_across_ragged_slices(fmt, dtype, monkeypatch):
    """The chunked regime dequantizes rows 0-7, 8-15, 16-19 into reused buffers and multiplies each slice; the
    stitched output equals the float64 oracle (spqr, whose statistics span rows, falls back to whole-weight dense)."""
    from llmprune.kernels import chunked

    slices = []
    monkeypatch.setattr(chunked, "chunk_rows", lambda n, k, itemsize: slices.append(n) or 8)
    kernel = importlib.import_module(f"llmprune.kernels.{fmt}")
    qw, packed = make(fmt, 64, 16, dtype, seed=11)
    x = torch.randn(6, 64, generator=torch.Generator().manual_seed(4)).to(dtype)
    out = torch.full((6, N), float("nan"), dtype=dtype)
    y = getattr(kernel, f"{fmt}_matmul")(x, packed, out=out, regime="chunked")
    assert not torch.isnan(y).any()
    assert slices == ([] if fmt == "spqr" else [N])
    oracle = x.to(torch.float64) @ qw.dequantize(torch.float32).to(torch.float64).T
    if fmt == "sparse24":
        oracle = dense_oracle(x, qw, dtype)
    assert rel_err(y, oracle) <= TOLERANCE[dtype]


@pytest.mark.parametrize("fmt", ["int4", "sparse24_int4", "group_sparse_int4", "spqr"])
@pytest.mark.parametrize("split", [2, 3, 4])
@pytest.mark.parametrize("k", [64, 128])
def test_split_k_sums_partials_once_and_resets_tickets(fmt, split, k, monkeypatch):
    """One token (and, but for spqr, 5-16 tokens on the tl.dot path) with K split among 2-4 programs
    (some empty when K has fewer steps than splits): the last program of each tile sums the partials (spqr's
    outliers are added by the first split only); the result equals the float64 oracle and every ticket counter is
    back at 0. 2-4 tokens with the same config do not split."""
    from llmprune.kernels import _launch

    monkeypatch.setattr(_launch, "GEMV_FIXED", {**_launch.GEMV_FIXED, "SPLIT_K": split})
    kernel = importlib.import_module(f"llmprune.kernels.{fmt}")
    qw, packed = make(fmt, k, 16, torch.float32, seed=split + k)
    oracle_w = qw.dequantize(torch.float32).to(torch.float64)
    launches = []
    splits = kernel.KERNELS.splits
    monkeypatch.setattr(kernel.KERNELS, "splits", lambda *a: launches.append(splits(*a)) or launches[-1])
    for tokens in (1, 3, 5):
        x = torch.randn(tokens, k, generator=torch.Generator().manual_seed(split)).to(torch.float32)
        out = torch.full((tokens, N), float("nan"))
        getattr(kernel, f"{fmt}_matmul")(x, packed, out=out, regime="gemv")
        assert rel_err(out, x.to(torch.float64) @ oracle_w.T) <= TOLERANCE[torch.float32]
    assert launches == [split, 1, 1 if fmt == "spqr" else split]
    assert int(_launch.split_k_buffers(x.device)[1].abs().sum()) == 0


@pytest.mark.parametrize("fmt,tokens,split,k,group", [("int4", 5, 1, 96, 16), ("int4", 16, 2, 128, 32),
                                                      ("int4", 7, 1, 72, 8), ("sparse24_int4", 5, 1, 96, 16),
                                                      ("sparse24_int4", 16, 2, 128, 32),
                                                      ("sparse24_int4", 9, 1, 80, 16)])
def test_fp16_tiles_of_64_rows_dequantize_in_half_precision(fmt, tokens, split, k, group, monkeypatch):
    """Tiles of >= 64 rows with fp16 activations and scales dequantize in half precision (int4: ``_int4_half_tile``;
    sparse24_int4: kept codes placed into dense int4 words by integer operations, ``_sparse24_int4_half_tile``),
    x permuted to the tile's column order: each weight is the reference's rounded once to fp16 (pruned ones exactly
    0), so the result matches the float64 oracle to fp16 rounding and the fp16-rounded dense weight to accumulation
    order; N = 80 leaves a ragged second tile, K = 72 / 80 a half-masked step."""
    from llmprune.kernels import _launch

    monkeypatch.setattr(_launch, "GEMV_FIXED", {"BLOCK_N": 64, "BLOCK_K": 32, "SPLIT_K": split})
    kernel = importlib.import_module(f"llmprune.kernels.{fmt}")
    qw = random_qw(80, k, group, torch.float16, seed=tokens + k, pattern="2:4" if fmt == "sparse24_int4" else "dense")
    packed = importlib.import_module(f"llmprune.formats.{fmt}").pack(qw, dtype="float16")
    x = torch.randn(tokens, k, generator=torch.Generator().manual_seed(k)).to(torch.float16)
    out = torch.full((tokens, 80), float("nan"), dtype=torch.float16)
    getattr(kernel, f"{fmt}_matmul")(x, packed, out=out, regime="gemv")
    oracle = x.to(torch.float64) @ qw.dequantize(torch.float32).to(torch.float64).T
    assert rel_err(out, oracle) <= TOLERANCE[torch.float16]
    dense16 = qw.dequantize(torch.float32).to(torch.float16).to(torch.float64)  # the tile the kernel must build
    assert rel_err(out, x.to(torch.float64) @ dense16.T) <= 1e-3


def test_split_k_launch_too_big_for_the_workspace_runs_unsplit(monkeypatch):
    """With room for fewer partials than splits x tokens x outputs, the 5-token int4 launch runs in one split
    (the kernel reads the split count from the grid, whatever SPLIT_K its config has) and stays exact."""
    from llmprune.kernels import _launch, int4

    monkeypatch.setattr(_launch, "GEMV_FIXED", {**_launch.GEMV_FIXED, "SPLIT_K": 4})
    monkeypatch.setattr(_launch, "SPLIT_K_PARTIALS", 4 * 5 * N - 1)
    launches = []
    splits = int4.KERNELS.splits
    monkeypatch.setattr(int4.KERNELS, "splits", lambda *a: launches.append(splits(*a)) or launches[-1])
    qw, packed = make("int4", 128, 8, torch.float32, seed=1)
    x = torch.randn(5, 128, generator=torch.Generator().manual_seed(1))
    out = torch.full((5, N), float("nan"))
    int4.int4_matmul(x, packed, out=out, regime="gemv")
    assert launches == [1]
    assert rel_err(out, x.to(torch.float64) @ qw.dequantize(torch.float32).to(torch.float64).T) <= 1e-5


@pytest.mark.parametrize("fmt,names", [("int4", ("qweight",)), ("sparse24_int4", ("qvalues", "meta"))])
@pytest.mark.parametrize("tokens", [1, 5])
def test_codes_at_an_odd_offset_reach_the_kernel_word_aligned(fmt, names, tokens, monkeypatch):
    """The word paths read codes (and 2:4 metadata) as 32/16-bit words; views at an odd byte offset are copied
    first (the interpreter would read them anyway, a GPU would fault), and the result still equals the reference."""
    kernel = importlib.import_module(f"llmprune.kernels.{fmt}")
    qw, packed = make(fmt, 64, 16, torch.float16, seed=5)
    shifted = dict(packed)
    for name in names:
        store = torch.empty(packed[name].numel() + 1, dtype=torch.uint8)
        store[1:] = packed[name].reshape(-1)
        shifted[name] = store[1:].view(packed[name].shape)
        assert shifted[name].data_ptr() % 4 != 0
    seen = []
    run = kernel.KERNELS.run
    monkeypatch.setattr(kernel.KERNELS, "run", lambda args, *rest: (seen.append(args[1:1 + len(names)]),
                                                                     run(args, *rest)))
    x = torch.randn(tokens, 64, generator=torch.Generator().manual_seed(2)).to(torch.float16)
    y = getattr(kernel, f"{fmt}_matmul")(x, shifted, regime="gemv")
    assert seen and all(t.data_ptr() % 4 == 0 for ts in seen for t in ts)
    assert rel_err(y, kernel.reference(x, packed)) <= TOLERANCE[torch.float16]


@pytest.mark.parametrize("fmt", ["int4", "sparse24", "sparse24_int4", "group_sparse_int4"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_formats_pack_matches_layout_doc(fmt, dtype):
    """llmprune.formats packs the same bytes as tests/kernels/packers.py, written from docs/FORMATS.md alone."""
    qw, packed = make(fmt, 64, 16, dtype, seed=11)
    mine = PACKERS[fmt](qw, dtype)
    assert sorted(mine) == sorted(packed)
    for name, tensor in mine.items():
        assert torch.equal(tensor, packed[name]), name


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dequantize_kernel_equals_formats_unpack(fmt, dtype):
    """<fmt>_dequantize computes (code - zero) * scale in float32 like formats.<fmt>.unpack: equal after rounding."""
    kernel = importlib.import_module(f"llmprune.kernels.{fmt}")
    formats = importlib.import_module(f"llmprune.formats.{fmt}")
    _, packed = make(fmt, 72, 8, dtype, seed=9)
    w = getattr(kernel, f"{fmt}_dequantize")(packed, dtype, 72) if fmt in ("group_sparse_int4", "spqr") \
        else getattr(kernel, f"{fmt}_dequantize")(packed, dtype)
    ref = formats.unpack(packed, 72).to(torch.float32)
    assert w.dtype == dtype
    if dtype == torch.bfloat16:  # Triton's interpreter rounds float32 -> bfloat16 toward zero (GPUs: to nearest)
        toward_zero = (ref.view(torch.int32) & -65536).view(torch.float32).to(dtype)
        assert torch.all((w == ref.to(dtype)) | (w == toward_zero))
    else:
        assert torch.equal(w, ref.to(dtype))


def test_spqr_bit_stream_straddles_words():
    """3-bit codes at columns 10, 21, 42, 53 straddle int32 words; the kernel must join both halves exactly."""
    from llmprune.kernels.spqr import spqr_matmul

    qw, packed = make("spqr", 64, 8, torch.float32, seed=5)
    cols = torch.tensor([10, 21, 42, 53])
    x = torch.zeros(len(cols), 64)
    x[torch.arange(len(cols)), cols] = 1.0  # one-hot rows read single weight columns
    y = spqr_matmul(x, packed)
    assert torch.allclose(y, qw.dequantize(torch.float32)[:, cols].T, rtol=0, atol=1e-6)


@pytest.mark.parametrize("fmt", ["int4", "sparse24", "sparse24_int4", "group_sparse_int4", "spqr"])
@pytest.mark.parametrize("split", [1, 2])
def test_two_to_four_tokens_on_the_padded_tl_dot_block(fmt, split, monkeypatch, launch_grids):
    """On a GPU the autotuner may run 2-4 tokens on the padded tl.dot block (BLOCK_B = 16, rows 3-15 masked) instead
    of the FMA block; the interpreter's fixed config is forced onto it here (with K split for the formats whose
    tl.dot path splits), and the result equals the float64 oracle."""
    from llmprune.kernels import _launch

    monkeypatch.setattr(_launch, "batch_block", lambda m: 16)
    monkeypatch.setattr(_launch, "GEMV_FIXED", {**_launch.GEMV_FIXED, "SPLIT_K": split})
    kernel = importlib.import_module(f"llmprune.kernels.{fmt}")
    qw, packed = make(fmt, 128, 16, torch.float32, seed=21)
    x = torch.randn(3, 128, generator=torch.Generator().manual_seed(5))
    out = torch.full((3, N), float("nan"))
    getattr(kernel, f"{fmt}_matmul")(x, packed, out=out, regime="gemv")
    oracle = x.to(torch.float64) @ qw.dequantize(torch.float32).to(torch.float64).T
    if fmt == "sparse24":
        oracle = dense_oracle(x, qw, torch.float32)
    assert rel_err(out, oracle) <= TOLERANCE[torch.float32]
    splits = split if fmt in ("int4", "sparse24_int4", "group_sparse_int4") else 1
    assert [(b, grid[1:]) for b, grid in launch_grids] == [(16, (1, splits))]


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("tokens,k,group,regime", [(1, 96, 16, "gemv"), (3, 80, 16, "gemv"), (2, 128, 64, "gemv"),
                                                   (5, 96, 16, "gemv"), (7, 80, 16, "gemm")])
def test_spqr_word_path_decodes_every_code_width(bits, tokens, k, group, regime):
    """spqr's word paths (1-4 token FMAs, 5-16 token and prefill tl.dot tiles) read each 32-code block as ``bits``
    whole words, so codes straddle words at bit offsets that differ per width; every width 1-8 (K = 80 ends on half
    a block) equals the float64 oracle."""
    from llmprune.formats import spqr as spqr_format
    from llmprune.kernels.spqr import spqr_matmul

    qw = random_spqr_qw(N, k, torch.float32, seed=bits, bits=bits, group=group)
    packed = spqr_format.pack(qw, dtype="float32")
    x = torch.randn(tokens, k, generator=torch.Generator().manual_seed(bits)).to(torch.float32)
    out = torch.full((tokens, N), float("nan"))
    spqr_matmul(x, packed, out=out, regime=regime)
    oracle = x.to(torch.float64) @ qw.dequantize(torch.float32).to(torch.float64).T
    assert rel_err(out, oracle) <= TOLERANCE[torch.float32]


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)
def test_spqr_word_dequantize_is_bit_exact_at_every_code_width(bits, dtype):
    """With g1 % 16 == 0 the dequantize kernel rebuilds the base weight from whole-word code blocks ((v - 1) * 2**bits
    is the code exactly, then the reference's (q - z) * s): equal to ``formats.spqr.unpack`` after rounding, outliers
    included (row 1 keeps every third column: several outlier steps per row), K = 80 ending on half a block."""
    from llmprune.formats import spqr as spqr_format
    from llmprune.kernels.spqr import spqr_dequantize

    qw = random_spqr_qw(N, 80, torch.float32, seed=bits, bits=bits, group=16)
    packed = spqr_format.pack(qw, dtype=str(dtype).removeprefix("torch."))
    w = spqr_dequantize(packed, dtype, 80)
    assert torch.equal(w, spqr_format.unpack(packed, 80).to(dtype))
