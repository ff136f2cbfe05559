"""benchmarks/kernels.py on CPU: its random packed weights obey the format contracts and the kernels agree with the
references on them (as the GPU run assumes); without CUDA the script says nothing was measured and exits 1."""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.scripts import load_benchmark

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "kernels.py"


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("kernels", "bench_kernels")


@pytest.mark.parametrize("fmt", ["int4", "sparse24", "sparse24_int4", "group_sparse_int4", "spqr"])
def test_benchmark_weights_fit_format_and_kernel_matches_reference(bench, fmt):
    from llmprune.formats import get_format

    record = get_format(fmt)
    packed = bench.random_packed(fmt, 20, 256, torch.float16, device="cpu")
    specs = record.tensor_specs(20, 256, **record.params(packed, 256))
    assert {k: (tuple(v.shape), v.dtype) for k, v in packed.items()} == \
        {k: (tuple(s.shape), s.dtype) for k, s in specs.items()}
    fn = getattr(importlib.import_module(f"llmprune.kernels.{fmt}"), f"{fmt}_matmul")
    for tokens in (1, 17):
        x = torch.randn(tokens, 256).to(torch.float16)
        y, ref = fn(x, packed).double(), record.matmul_ref(x, packed).double()
        assert float((y - ref).norm() / ref.norm()) <= 2e-3


def test_benchmark_without_cuda_fails_saying_nothing_was_measured():
    """A CI step `python benchmarks/kernels.py && ...` must not pass when nothing ran."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # hide any GPU: the no-CUDA path is what is tested
    run = subprocess.run([sys.executable, str(BENCH), "--quick"], capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 1 and "no CUDA GPU visible" in run.stderr, run.stderr


def test_benchmark_summary_flags_goals_and_reports_crossover_ratios(bench):
    """Synthetic timings: int4 at 3.5x passes its 3x goal, a 0.8x large-batch path is reported as slower than the
    10% bound, and the gemm / dense time ratios per batch are listed."""
    rows = [dict(fmt="int4", n=11008, k=4096, m=1, regime=None, t=10.0, dense=35.0, bw=0.8)]
    for m, gemm in ((64, 8.0), (512, 30.0)):
        rows += [dict(fmt="int4", n=11008, k=4096, m=m, regime=r, t=t, dense=24.0, bw=0.5)
                 for r, t in ((None, 30.0 if m == 512 else 8.0), ("gemm", gemm), ("dense", 20.0))]
    text = "\n".join(bench.summary(rows))
    assert "worst 3.50x over dense (goal 3x: met)" in text
    assert "worst 0.80x of dense (SLOWER" in text
    assert "- int4: batch 64: 0.40, batch 512: 1.50" in text


def test_benchmark_summary_counts_pipelined_decode_choices(bench):
    """How often the autotuner chose a pipelined 1-4 token loop (_configs.pipelining) is read off the recorded
    configs; the padded tl.dot block and larger batches do not count."""
    rows = [dict(fmt="int4", n=4096, k=4096, m=m, regime=None, t=1.0, dense=1.0, bw=0.5, config=config)
            for m, config in ((1, "B1 N64 K256 split4 stages3 w4"), (2, "B2 N16 K64 w4"), (4, "B16 N64 K128 w4"),
                              (16, "B16 N64 K128 w4"), (4, "B4 N16 K64 stages3 w4"))]
    assert "pipelined loop (STAGES): 2 of 3" in "\n".join(bench.summary(rows))


def timings(fmt, per_batch):
    """Records of two shapes and both dtypes with the same times: {batch: {regime: microseconds}}."""
    return [dict(fmt=fmt, n=n, k=4096, m=m, dtype=dt, regime=r, t=t, dense=1.0, bw=0.5)
            for n in (4096, 11008) for dt in ("float16", "bfloat16") for m, times in per_batch.items()
            for r, t in times.items()]


def test_measured_crossovers_become_this_gpus_dispatch_table(bench, tmp_path, monkeypatch):
    """int4: dense wins at 64, loses at 512, wins at 4096 -> dense only from 4096 (a regime flips once); chunked
    beats whole-weight dense only at 4096. spqr: dense wins from the smallest measured batch, so the lower threshold
    already in effect (17) stays. Unmeasured formats and the decode limits keep the table in effect; the written
    table, installed in the user cache, is what dispatch then follows for that GPU."""
    from llmprune.kernels import select

    records = timings("int4", {64: {"gemm": 8.0, "dense": 7.5, "chunked": 7.6},
                               512: {"gemm": 18.0, "dense": 20.0, "chunked": 25.0},
                               4096: {"gemm": 200.0, "dense": 100.0, "chunked": 90.0}})
    records += timings("spqr", {64: {"gemm": 50.0, "dense": 9.0}, 512: {"gemm": 500.0, "dense": 30.0}})
    base = select.rules(None)
    measured = select.measured_rules(records, base)
    assert measured.dense_from == {**base.dense_from, "int4": 4096, "spqr": 17}
    assert measured.chunked_from == {**base.chunked_from, "int4": 4096}
    assert measured.gemv_up_to == base.gemv_up_to
    assert [measured.choose("int4", m) for m in (16, 17, 512, 4095, 4096)] == \
        ["gemv", "gemm", "gemm", "gemm", "chunked"]

    monkeypatch.setenv("LLMPRUNE_CACHE_DIR", str(tmp_path))
    select.rules.cache_clear()
    try:
        bench.write_atomic(tmp_path / "crossovers" / "Some-GPU.json", measured.to_json())
        assert select.rules("Some GPU").dense_from["int4"] == 4096
        assert select.rules("Some GPU").choose("int4", 5000) == "chunked"
        assert select.rules("Other GPU").source == base.source  # no table: the default GPU's
    finally:
        select.rules.cache_clear()


def test_semi_structured_crossover_is_measured_against_sparse24s_own_path(bench, tmp_path, monkeypatch):
    """The semi-structured weight (time carried on sparse24's automatic-regime records) loses at 1 token and wins
    from 4 on for good: semi_from 4, written to and read back from the GPU's table; a table without the entry (older
    runs) keeps the a-priori 512, and a run that never timed it keeps the table's value."""
    from llmprune.kernels import select

    records = [{**r, "semi": {1: 12.0, 4: 6.0, 16: 9.0}[r["m"]]}
               for r in timings("sparse24", {1: {None: 10.0}, 4: {None: 10.0}, 16: {None: 10.0}})]
    base = select.rules(None)
    measured = select.measured_rules(records, base)
    assert measured.semi_from == 4 and "from 4 tokens" in measured.describe()[-1]
    assert select.measured_rules(timings("int4", {1: {None: 1.0}}), base).semi_from == base.semi_from
    table = tmp_path / "t.json"
    bench.write_atomic(table, measured.to_json())
    assert select.read_rules(table).semi_from == 4
    old = json.loads(measured.to_json())
    del old["semi_from"]
    table.write_text(json.dumps(old))
    assert select.read_rules(table).semi_from == select.SEMI_FROM == 512
    assert select.rules(None).semi_from == 4  # the shipped H100 table


@pytest.mark.parametrize("ratios,base,want", [
    ({4: 0.5, 16: 0.8}, 4, 16),  # the decode kernel wins at every measured batch: up to the largest
    ({4: 0.5, 16: 1.3}, 16, 4),  # loses at 16: up to 4 (the table's 16 is not below the loss)
    ({4: 0.5, 16: 1.3}, 8, 8),  # ... unless the table's limit lies in the unmeasured gap
    ({4: 1.2, 16: 0.5}, 16, 3),  # loses at the smallest measured batch: below it, whatever happens later
    ({4: 1.2}, 2, 2),
    ({2: 1.5}, 16, 1),  # one token always decodes
])
def test_decode_limit_from_gemv_over_gemm_timings(ratios, base, want):
    from llmprune.kernels.select import decode_limit

    assert decode_limit(ratios, base) == want


def test_measured_decode_limits_enter_the_table():
    """GQSA's decode kernel beats its prefill kernel at 4 tokens and loses at 16, int4's wins at both: the measured
    table keeps GQSA's decode to 4 and int4's to 16 (below a table limit of 2, the wins would raise it)."""
    from llmprune.kernels import select

    records = timings("group_sparse_int4", {4: {"gemv": 5.0, "gemm": 40.0}, 16: {"gemv": 60.0, "gemm": 20.0}})
    records += timings("int4", {4: {"gemv": 5.0, "gemm": 9.0}, 16: {"gemv": 10.0, "gemm": 12.0}})
    base = select.rules(None)
    measured = select.measured_rules(records, base)
    assert measured.gemv_up_to == {**base.gemv_up_to, "group_sparse_int4": 4, "int4": 16}
    assert [measured.choose("group_sparse_int4", m) for m in (4, 5)] == ["gemv", "gemm"]
    low = select.Rules("t", "t", {**base.gemv_up_to, "int4": 2}, base.dense_from, base.chunked_from)
    assert select.measured_rules(records, low).gemv_up_to["int4"] == 16


def test_decode_past_its_largest_block_runs_several_token_blocks(bench, monkeypatch, launch_grids):
    """A table that sends 20 tokens to GQSA's decode kernel (whose largest block is 16 tokens) launches two token
    blocks, the second partly masked, and stays exact."""
    from llmprune.kernels import group_sparse_int4, select

    table = select.rules(None)
    wide = select.Rules("test", "test", {**table.gemv_up_to, "group_sparse_int4": 32}, table.dense_from,
                        table.chunked_from)
    monkeypatch.setattr("llmprune.kernels._launch.device_rules", lambda device: wide)
    packed = bench.random_packed("group_sparse_int4", 20, 256, torch.float16, device="cpu")
    x = torch.randn(20, 256, generator=torch.Generator().manual_seed(9)).to(torch.float16)
    out = torch.full((20, 20), float("nan"), dtype=torch.float16)
    group_sparse_int4.group_sparse_int4_matmul(x, packed, out=out)
    assert [(b, grid[1]) for b, grid in launch_grids] == [(16, 2)]
    ref = importlib.import_module("llmprune.formats.group_sparse_int4").matmul_ref(x, packed).double()
    assert float((out.double() - ref).norm() / ref.norm()) <= 2e-3


def test_benchmark_check_dry_run_passes_on_cpu(bench, capsys):
    """The GPU correctness pass itself (every regime, NaN-poisoned outputs, Frobenius bounds) on a small shape."""
    cases = [c for c in bench.CHECK_CASES if c[0] < 512 or c[1] == "dense"]  # the interpreter is slow at 512 rows
    rows = bench.check(["int4", "sparse24_int4", "group_sparse_int4", "spqr"], [torch.float16], (20, 256), "cpu",
                       cases)
    assert len(rows) == 4 * len(cases) and all(row.endswith("| ok |") for row in rows)


def test_bench_rows_name_the_config_the_autotuner_chose(bench, monkeypatch):
    """Which 2-4 token block (FMA or padded tl.dot) and split count won is read off the autotuner after the timing;
    the dequantize regimes have none."""
    import triton

    from llmprune.kernels import int4

    monkeypatch.setattr(int4.KERNELS.gemv_tuned, "best_config",
                        triton.Config({"BLOCK_B": 16, "BLOCK_N": 64, "BLOCK_K": 128, "SPLIT_K": 4}, num_warps=4),
                        raising=False)
    assert bench.tuned_config("int4", None, 4, torch.device("cpu")) == "B16 N64 K128 split4 w4"
    assert bench.tuned_config("int4", "dense", 4096, torch.device("cpu")) == "-"


def test_host_cost_rows_time_launcher_and_module(bench):
    """The host-overhead table's CPU dry run (interpreter): one row for dense, one per format with two numbers."""
    formats = ["int4", "sparse24", "sparse24_int4", "group_sparse_int4", "spqr"]
    rows = bench.host_cost(formats, torch.float16, (32, 256), device="cpu", calls=2)
    assert rows[0].startswith("| dense F.linear |") and [r.split(" | ")[0] for r in rows[1:]] == [
        f"| {fmt}" for fmt in formats]
    assert all(float(r.split(" | ")[1]) > 0 and float(r.split(" | ")[2].rstrip(" |")) > 0 for r in rows[1:])


def _stand_in_timer(fn, reps: int = 50):
    fn()
    return 1.0, False


@pytest.mark.parametrize("fmt", ["int4", "group_sparse_int4"])
def test_bench_checks_every_timed_output_against_the_reference(bench, fmt, monkeypatch):
    """The CPU dry run of the timing loop: every timed regime's output is compared with the torch reference (rows
    end with the error); a kernel that writes a wrong result is marked FAIL in its row and record."""
    rows, records = [], []
    bench.bench_shape(fmt, 20, 256, torch.float16, [1, 4], _stand_in_timer, 1.0, rows.append, records, device="cpu")
    assert [r["regime"] for r in records] == [None, None, "gemv", "gemm"]
    assert all(r["ok"] and r["err"] < 2e-3 for r in records) and not any("FAIL" in row for row in rows)

    import llmprune.kernels

    good = llmprune.kernels.matmul_fn(fmt)
    monkeypatch.setattr(llmprune.kernels, "matmul_fn", lambda name: lambda x, p, **kw: good(x, p, **kw).mul_(1.01))
    rows, records = [], []
    bench.bench_shape(fmt, 20, 256, torch.float16, [1], _stand_in_timer, 1.0, rows.append, records, device="cpu")
    assert not records[0]["ok"] and rows[0].endswith("FAIL |")


def test_autotune_plan_counts_compiles_once_per_config_and_timings_once_per_key(bench):
    """int4's one-token decode has 14 plain tiles and 4 split-K tiles x 4 split counts, each plain and pipelined:
    60 configs, compiled once for any number of shapes but timed once per shape; from 64 tokens the H100 table
    runs dequantize + cuBLAS, so only the forced prefill kernel is tuned, with its 5 tiles of <= 64 rows."""
    import kernel_plan

    from llmprune.kernels import select

    h100 = select.rules("NVIDIA H100 80GB HBM3")
    one, two = [(4096, 4096)], [(4096, 4096), (11008, 4096)]
    assert kernel_plan.autotune_work("int4", one, [1], h100) == (60, 60)
    assert kernel_plan.autotune_work("int4", two, [1], h100) == (60, 120)
    assert kernel_plan.autotune_work("int4", two, [64], h100) == (5, 10)
    rows = kernel_plan.plan_rows(["int4", "sparse24"], one, [1, 64], h100)
    assert [r.split(" | ")[0] for r in rows] == ["| int4", "| sparse24", "| **all**"]
    assert rows[-1].split(" | ")[1:3] == [str(sum(int(r.split(" | ")[i]) for r in rows[:2])) for i in (1, 2)]


def test_precompile_launch_compiles_every_tuned_config_and_runs_nothing(bench, monkeypatch):
    """With ``compile_for`` set, a launch hands each config the autotuner would time for those token counts to
    Triton's ``warmup`` (compile, no launch) once, with the launch's constexprs and the config's meta-parameters,
    as the autotuner's timing launch passes them (so Triton's cache key is the one it then finds); the output is
    left as it was. int4, one token: 60 configs (test above); 1-16 tokens add the 4- and 16-token blocks."""
    from triton.runtime.interpreter import InterpretedFunction

    from llmprune.kernels import int4

    calls = []
    monkeypatch.setattr(InterpretedFunction, "warmup", lambda self, *args, grid, **kw: calls.append((self, args, kw)),
                        raising=False)
    packed = bench.random_packed("int4", 32, 256, torch.float16, device="cpu")
    out = torch.full((1, 32), float("nan"), dtype=torch.float16)
    monkeypatch.setattr(int4.KERNELS, "compile_for", (1,))
    int4.int4_matmul(torch.randn(1, 256).half(), packed, out=out, regime="gemv")
    assert torch.isnan(out).all() and len(calls) == 60
    configs = int4.KERNELS.tuned_configs("gemv", (1,))
    for (kernel, args, kw), config in zip(calls, configs):
        assert kernel is int4.KERNELS.gemv and kw == {"GROUP": 128, "DOT_F32": False, **config.all_kwargs()}
        unset = set(kernel.arg_names[len(args):]) - set(kw)
        assert unset <= {"SPLIT_K", "STAGES"} - set(config.kwargs)  # defaults only where the config leaves them
    calls.clear()
    monkeypatch.setattr(int4.KERNELS, "compile_for", (1, 4, 16))
    int4.int4_matmul(torch.randn(16, 256).half(), packed, regime="gemv")
    int4.int4_matmul(torch.randn(16, 256).half(), packed, regime="gemm")
    wide = int4.KERNELS.tuned_configs("gemv", (4, 16))
    assert len({str(kw) for k, _, kw in calls if k is int4.KERNELS.gemv}) == len(calls) - 1 == 60 + len(wide)
    assert [kw["BLOCK_M"] for k, _, kw in calls if k is int4.KERNELS.gemm] == [16]  # prefill tiles <= 16 tokens


def test_precompile_dry_run_warms_both_regimes_of_each_format_per_shape_and_dtype(bench, monkeypatch):
    """benchmarks/kernels.py --precompile on CPU (interpreter, warmup recorded): per format, dtype and shape one
    decode and one prefill launch compile their configs, then ``compile_for`` is cleared so later calls run."""
    import kernel_plan
    from triton.runtime.interpreter import InterpretedFunction

    from llmprune.kernels import int4, sparse24

    seen = []
    monkeypatch.setattr(InterpretedFunction, "warmup", lambda self, *a, grid, **kw: seen.append(self), raising=False)
    lines = kernel_plan.precompile(["int4", "sparse24"], [torch.float16, torch.bfloat16], [(32, 256), (16, 512)],
                                   [1, 16], workers=2, device="cpu")
    assert [line.split(":")[0] for line in lines] == ["precompiled int4", "precompiled sparse24"]
    for kernels in (int4.KERNELS, sparse24.KERNELS):
        per_launch = {k: len(kernels.tuned_configs(r, [1, 16])) for k, r in ((kernels.gemv, "gemv"),
                                                                             (kernels.gemm, "gemm"))}
        assert {k: seen.count(k) for k in per_launch} == {k: 4 * n for k, n in per_launch.items()}  # 2 dtypes x 2
        assert kernels.compile_for is None


def test_host_overhead_script_times_every_format_on_the_autotuned_path(tmp_path):
    """benchmarks/host_overhead.py runs on CPU (in its own process: it rewires the launchers as on a GPU) and writes
    one row per format with three positive timings, then one per format for a Llama block unmerged and merged; its
    own assertions check that the module kept a config and that the merged layers took the kernel path."""
    out = tmp_path / "host.md"
    script = BENCH.parent / "host_overhead.py"
    done = subprocess.run([sys.executable, str(script), "--calls", "2", "--repeats", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    calls, block = out.read_text().split("decoder block")
    for text in (calls, block):
        rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| ") and " - |" not in line]
        assert [r[0] for r in rows[1:]] == [f"| {fmt}" for fmt in ("int4", "sparse24", "sparse24_int4",
                                                                   "group_sparse_int4", "spqr")]
        assert all(len(r) == 4 and float(v.strip(" |x")) > 0 for r in rows[1:] for v in r[1:])
