"""Launcher checks (one-line UserInputError naming the fix), the dispatch table and the package's import hygiene."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llmprune.errors import UserInputError
from llmprune.kernels import available, matmul_fn, select
from llmprune.kernels.int4 import int4_matmul
from packers import pack_int4, random_qw


@pytest.fixture
def packed():
    return pack_int4(random_qw(20, 64, 16, torch.float16, seed=0), torch.float16)


def x16(tokens=2, k=64):
    return torch.randn(tokens, k).to(torch.float16)


@pytest.mark.parametrize("mutate,x,words", [
    (lambda p: p, x16(k=48), "48 features"),
    (lambda p: p, x16().to(torch.int32), "cast them to float16"),
    (lambda p: {**p, "scales": p["scales"].t().contiguous().t()}, x16(), "not contiguous"),
    (lambda p: {k: v for k, v in p.items() if k != "zeros"}, x16(), "lacks 'zeros'"),
    (lambda p: {**p, "zeros": p["zeros"].to(torch.int32)}, x16(), "'zeros' is torch.int32"),
    (lambda p: {**p, "scales": p["scales"][:, :3].contiguous()}, x16(), "do not divide"),
])
def test_int4_matmul_rejects_bad_input_with_one_line(packed, mutate, x, words):
    with pytest.raises(UserInputError) as err:
        int4_matmul(x, mutate(packed))
    assert words in str(err.value) and "\n" not in str(err.value)


def test_matmul_rejects_bad_out_and_regime(packed):
    with pytest.raises(UserInputError, match="out= must be"):
        int4_matmul(x16(), packed, out=torch.empty(2, 21, dtype=torch.float16))
    with pytest.raises(UserInputError, match="regime 'fast' is unknown"):
        int4_matmul(x16(), packed, regime="fast")


def test_matmul_of_no_tokens_is_empty(packed):
    assert int4_matmul(torch.empty(0, 64, dtype=torch.float16), packed).shape == (0, 20)


def test_select_table_follows_the_measured_crossovers():
    assert [select.choose("int4", m) for m in (1, 16, 17, 63, 64, 4096)] == \
        ["gemv", "gemv", "gemm", "gemm", "dense", "dense"]
    assert [select.choose("group_sparse_int4", m) for m in (16, 17, 64)] == ["gemv", "gemm", "dense"]
    assert [select.choose("spqr", m) for m in (16, 17)] == ["gemv", "dense"]


def test_a_users_crossover_table_overrides_the_shipped_one_and_a_broken_one_is_a_one_line_error(tmp_path,
                                                                                                monkeypatch):
    monkeypatch.setenv("LLMPRUNE_CACHE_DIR", str(tmp_path))
    folder = tmp_path / "crossovers"
    folder.mkdir()
    shipped = select.rules(None)
    select.rules.cache_clear()
    try:
        mine = {"gpu": select.DEFAULT_GPU, "gemv_up_to": {**shipped.gemv_up_to, "int4": 8},
                "dense_from": {**shipped.dense_from, "int4": None}, "chunked_from": {}}
        (folder / f"{select.DEFAULT_GPU}.json").write_text(json.dumps(mine))
        assert [select.choose("int4", m) for m in (8, 9, 100000)] == ["gemv", "gemm", "gemm"]
        for broken in ("{", json.dumps({**mine, "dense_from": {"int4": 64}}),
                       json.dumps({**mine, "gemv_up_to": {**mine["gemv_up_to"], "int4": "8"}})):
            (folder / f"{select.DEFAULT_GPU}.json").write_text(broken)
            select.rules.cache_clear()
            with pytest.raises(UserInputError) as err:
                select.choose("int4", 1)
            assert "crossover table" in str(err.value) and "\n" not in str(err.value)
    finally:
        select.rules.cache_clear()


def test_matmul_fn_names_each_launcher():
    assert matmul_fn("int4") is int4_matmul
    with pytest.raises(UserInputError, match="no kernel for format 'dense'"):
        matmul_fn("dense")


def test_available_needs_cuda():
    assert available() is torch.cuda.is_available()


def _python(code: str, interpret: bool) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", **({"TRITON_INTERPRET": "1"} if interpret else {})}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_kernels_package_and_select_import_no_triton():
    code = "import sys, llmprune, llmprune.kernels, llmprune.kernels.select; print('triton' in sys.modules)"
    assert _python(code, interpret=False).stdout.strip() == "False"


def test_compiled_build_refuses_cpu_input_with_fix():
    """Without the interpreter a CPU tensor cannot reach a Triton launch: the launcher says what to do."""
    code = ("import torch\nfrom llmprune.kernels.int4 import int4_matmul\n"
            "p = {'qweight': torch.zeros(4, 8, dtype=torch.uint8), 'scales': torch.ones(4, 1, dtype=torch.float16),"
            " 'zeros': torch.zeros(4, 1, dtype=torch.uint8)}\n"
            "try:\n    int4_matmul(torch.ones(1, 16, dtype=torch.float16), p)\n"
            "except Exception as e:\n    print(type(e).__name__, e)")
    out = _python(code, interpret=False).stdout
    assert "UserInputError" in out and "move the input to CUDA" in out


def test_autotune_pruning_keeps_tl_dot_tiles_legal():
    from llmprune.kernels import _configs as c

    dot_tiles = c.prune_gemv(c.gemv_configs(), {"M_BUCKET": 16})
    assert dot_tiles and all(cfg.kwargs["BLOCK_N"] >= 16 and cfg.kwargs["BLOCK_B"] == 16 for cfg in dot_tiles)
    assert len(c.prune_gemv(c.gemv_configs(), {"M_BUCKET": 1})) == len(c.gemv_configs((1,)))
    # the FMA blocks come with and without a pipelined loop; the tl.dot block only as Triton pipelines it
    assert {cfg.kwargs.get("STAGES") for cfg in c.gemv_configs((1, 2, 4)) + c.split_k_configs((1,))} == {
        None, c.PIPELINE_STAGES}
    assert all("STAGES" not in cfg.kwargs for cfg in c.gemv_configs((16,)) + c.split_k_configs((16,)))
    assert {cfg.kwargs["BLOCK_M"] for cfg in c.prune_gemm(c.gemm_configs(), {"M_BUCKET": 32})} <= {16, 32}


def test_pipelined_tiles_that_stage_gathered_x_beyond_shared_memory_are_pruned():
    """GQSA gathers x per row, so a pipelined step stages BLOCK_B x BLOCK_N x BLOCK_K activations: its 256x128
    one-token tile (276 KB on sm_90, compile_check --full) is pruned pipelined but kept plain; int4 keeps both."""
    from llmprune.kernels import group_sparse_int4, int4

    def tiles(kernels, bucket):
        kept = kernels.prune_gemv(kernels.gemv_tuned.configs, {"M_BUCKET": bucket})
        return {(cfg.kwargs["BLOCK_B"], cfg.kwargs["BLOCK_N"], cfg.kwargs["BLOCK_K"], "STAGES" in cfg.kwargs)
                for cfg in kept}

    gqsa, plain = tiles(group_sparse_int4.KERNELS, 1), tiles(int4.KERNELS, 1)
    assert (1, 256, 128, False) in gqsa and (1, 256, 128, True) not in gqsa and (1, 64, 256, True) in gqsa
    assert {(1, 256, 128, False), (1, 256, 128, True)} <= plain
    assert all(b * n * k <= 64 * 256 for b, n, k, piped in tiles(group_sparse_int4.KERNELS, 4) if piped and b < 16)


def test_kernels_compile_for_hopper_without_a_gpu():
    """Triton's bundled ptxas builds every kernel (one config each, fp16 and bf16) for sm_90 on this CPU machine."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = Path(__file__).with_name("compile_check.py")
    run = subprocess.run([sys.executable, str(script), "--arch", "90"], capture_output=True, text=True, env=env,
                         timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr[-2000:]


def test_only_the_word_and_select_paths_split_k():
    from llmprune.kernels import group_sparse_int4, int4, sparse24, sparse24_int4

    assert int4.KERNELS.splits({"BLOCK_B": 1, "BLOCK_N": 16, "GROUP": 128, "SPLIT_K": 4}, 1, 4096) == 4
    assert int4.KERNELS.splits({"BLOCK_B": 16, "BLOCK_N": 64, "GROUP": 128, "SPLIT_K": 4}, 16, 4096) == 4  # tl.dot
    assert int4.KERNELS.splits({"BLOCK_B": 1, "BLOCK_N": 16, "GROUP": 128}, 1, 4096) == 1
    assert int4.KERNELS.splits({"BLOCK_B": 4, "BLOCK_N": 16, "GROUP": 128, "SPLIT_K": 4}, 3, 4096) == 1  # FMA path
    assert int4.KERNELS.splits({"BLOCK_B": 1, "BLOCK_N": 16, "GROUP": 4, "SPLIT_K": 4}, 1, 4096) == 1  # generic tile
    assert sparse24_int4.KERNELS.splits({"BLOCK_B": 1, "BLOCK_N": 16, "GROUP": 4, "SPLIT_K": 4}, 1, 64) == 4  # g % 4
    assert sparse24_int4.KERNELS.splits({"BLOCK_B": 16, "BLOCK_N": 64, "GROUP": 128, "SPLIT_K": 4}, 16, 64) == 4
    assert sparse24_int4.KERNELS.splits({"BLOCK_B": 16, "BLOCK_N": 64, "GROUP": 8, "SPLIT_K": 4}, 16, 64) == 1
    assert group_sparse_int4.KERNELS.splits({"BLOCK_B": 1, "BLOCK_N": 16, "GROUP": 4, "SPLIT_K": 4}, 1, 64) == 1
    gqsa16 = {"BLOCK_B": 16, "BLOCK_N": 64, "SPLIT_K": 4}  # the kept-map walk splits; the gather path (g 48) not
    assert [group_sparse_int4.KERNELS.splits({**gqsa16, "GROUP": g}, 16, 64) for g in (16, 128, 48, 8)] == [4, 4, 1, 1]
    assert sparse24.KERNELS.splits({"BLOCK_B": 1, "BLOCK_N": 16, "SPLIT_K": 4}, 1, 64) == 1  # no split-K kernel
    kept = int4.KERNELS.prune_gemv(int4.KERNELS.gemv_tuned.configs, {"M_BUCKET": 4})
    assert {c.kwargs.get("SPLIT_K", 1) for c in kept if c.kwargs["BLOCK_B"] == 4} == {1}  # the FMA path never splits
    assert {c.kwargs.get("SPLIT_K", 1) for c in kept if c.kwargs["BLOCK_B"] == 16} == {1, 2, 4, 8}


@pytest.mark.parametrize("fmt,bucket,blocks", [("int4", 1, {1}), ("int4", 2, {2, 16}), ("int4", 4, {4, 16}),
                                               ("int4", 8, {16}), ("int4", 16, {16}), ("sparse24", 4, {4, 16}),
                                               ("group_sparse_int4", 4, {4, 16}), ("group_sparse_int4", 2, {2, 16}),
                                               ("group_sparse_int4", 16, {16})])
def test_autotuner_times_fma_and_padded_dot_blocks_for_2_to_4_tokens(fmt, bucket, blocks):
    """The autotuned decode launch keeps, for its token bucket, the FMA block that holds the tokens and (2-4 tokens,
    formats with a tl.dot decode path) the padded block 16, so the GPU's timings choose; every kept FMA config's
    accumulator fits ACC_PER_THREAD registers and every tl.dot config is at least 16 rows."""
    import importlib

    from llmprune.kernels import _configs

    kernels = importlib.import_module(f"llmprune.kernels.{fmt}").KERNELS
    kept = kernels.prune_gemv(kernels.gemv_tuned.configs, {"M_BUCKET": bucket})
    assert {c.kwargs["BLOCK_B"] for c in kept} == blocks
    for c in kept:
        bb, bn, bk = c.kwargs["BLOCK_B"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"]
        assert bn >= 16 if bb == 16 else bb == 1 or bb * bn * bk // 8 <= _configs.ACC_PER_THREAD * 32 * c.num_warps


def test_token_counts_are_not_specialized_so_one_compile_serves_every_bucket():
    """M_BUCKET only keys the autotuner and M only masks token rows; were Triton to specialize them (ints == 1,
    ints % 16 == 0), each config would compile again per decode bucket. Checked on the compiled (not interpreted)
    kernels."""
    code = ("import importlib\n"
            "for fmt in ('int4', 'sparse24', 'sparse24_int4', 'group_sparse_int4', 'spqr'):\n"
            "    k = importlib.import_module('llmprune.kernels.' + fmt).KERNELS\n"
            "    for fn in (k.gemv, k.gemm):\n"
            "        flags = {p.name: p.do_not_specialize for p in fn.params}\n"
            "        assert flags.pop('M_BUCKET') and flags.pop('M') and not any(flags.values()), (fmt, fn)\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]


def test_a_launch_whose_partials_overflow_the_workspace_does_not_split():
    """16 tokens x 28672 outputs x 8 splits fit the shared workspace; 600 tokens forced onto the decode path do
    not, so that launch runs unsplit (the kernels read the split count from the grid) instead of overrunning it."""
    from llmprune.kernels import int4

    meta = {"BLOCK_B": 16, "BLOCK_N": 64, "GROUP": 128, "SPLIT_K": 8}
    assert int4.KERNELS.splits(meta, 16, 28672) == 8
    assert int4.KERNELS.splits(meta, 600, 28672) == 1


def test_chunk_rows_hold_8_mb_of_whole_gemm_tiles():
    from llmprune.kernels.chunked import chunk_rows

    assert chunk_rows(11008, 4096, 2) == 1024  # 1024 x 4096 x 2 B = 8 MiB
    assert chunk_rows(4096, 11008, 2) == 256  # 381 rows fit, rounded down to whole 128-row tiles
    assert chunk_rows(4096, 131072, 2) == 128  # never below one tile
    assert chunk_rows(300, 4096, 2) == 300  # a weight smaller than a slice is one slice


def test_decode_loops_have_no_int_to_float_conversions_shuffles_or_spills():
    """The sm_90 SASS of every decode loop (instruction_mix.py): codes become floats by bit operations (no I2F per
    code), 2-4 token accumulators are reduced after the loop (no SHFL per step), nothing spills."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = Path(__file__).with_name("instruction_mix.py")
    run = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True, env=env,
                         timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr[-2000:]


def test_sparse24_routes_large_batches_to_a_given_semi_structured_weight():
    """With packed['semi_structured'] present, the table's semi_from tokens and more use it (a dense stand-in here,
    since to_sparse_semi_structured needs CUDA); fewer tokens stay on the Triton kernels; forcing it without one
    fails."""
    from llmprune.formats.sparse24 import pack, unpack
    from llmprune.kernels.sparse24 import sparse24_matmul

    packed = pack(random_qw(20, 64, 16, torch.float32, seed=4, pattern="2:4"), dtype="float32")
    marker = {**packed, "semi_structured": 2 * unpack(packed)}  # twice the weight: shows which path ran
    big, small = torch.randn(select.rules(None).semi_from, 64), torch.randn(3, 64)
    assert torch.allclose(sparse24_matmul(big, marker), 2 * big @ unpack(packed).T, rtol=1e-4, atol=1e-4)
    assert torch.allclose(sparse24_matmul(small, marker), small @ unpack(packed).T, rtol=1e-4, atol=1e-4)
    with pytest.raises(UserInputError, match="semi_structured_weight"):
        sparse24_matmul(small, packed, regime="semi_structured")
