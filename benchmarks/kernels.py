"""GPU benchmark and full-size correctness check of the packed-format kernels (issue 6).

    python benchmarks/kernels.py [--check] [--bench] [--dtypes float16,bfloat16] [--formats int4,..] [--results DIR]

``--check`` compares every kernel and regime with the format's torch reference at 11008x4096 (relative Frobenius
error bounds per dtype, NaN-poisoned outputs). ``--bench`` times each format on the Llama-2-7B / Llama-3-8B linear
shapes and 28672x8192 at batch 1..4096 against dense ``torch.nn.functional.linear`` (cuBLAS) and, for 2:4 formats,
PyTorch's ``to_sparse_semi_structured``. Hygiene: a 256 MB buffer is zeroed before every repetition (flushes the
50 MB L2 and keeps the GPU busy while the next launch is queued), each call is replayed from a CUDA graph (falling
back to eager launches, reported, when capture fails), random non-zero data, median of many repetitions, and the
device-to-device copy bandwidth of a 512 MB buffer measured in the same run as the roofline. Results go to
``<results>/<date>-<gpu>.md`` (written atomically at the end; rows stream to a ``.partial`` file while running),
with the dispatch crossovers measured here as ``<report>.crossovers.json``: copy it into ``kernels/crossovers/`` to
ship it, or pass ``--install`` to make this machine's dispatch follow it (kernels/select.py). Only ``--plan`` runs
without CUDA: anything else prints a one-line error and exits 1, so a CI step never mistakes "nothing ran" for a pass.
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path

import torch

from llmprune.errors import UserInputError
from llmprune.kernels.select import measured_rules
from llmprune.settings import cache_dir

sys.path.insert(0, str(Path(__file__).resolve().parent))  # this script's sibling modules, however it is loaded
from kernel_inputs import nbytes, random_packed  # noqa: E402
from kernel_plan import COMPILE_S, TIMED_S, plan_rows, precompile, timed_regimes  # noqa: E402
from kernel_report import summary, tuned_config  # noqa: E402
from kernel_timing import Timer, try_time, copy_bandwidth  # noqa: E402

SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008), (14336, 4096), (4096, 14336), (28672, 8192)]  # (out, in)
BATCHES = [1, 4, 16, 64, 512, 4096]
FORMATS = ["int4", "sparse24", "sparse24_int4", "group_sparse_int4", "spqr"]
CHECK_CASES = [(1, "gemv"), (2, "gemv"), (4, "gemv"), (16, "gemv"), (16, "gemm"), (64, "gemm"), (512, "gemm"),
               (512, "dense"), (512, "chunked"), (37, None)]  # (tokens, regime); None: kernels/select.py's choice
CHECK_SHAPE = (11008, 4096)
CHECK_BOUND = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2}  # ||y - ref||_F / ||ref||_F
DTYPES = [str(d).removeprefix("torch.") for d in CHECK_BOUND]  # --dtypes: those the check has an error bound for


def checked(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> tuple[float, bool]:
    """(relative Frobenius error of ``out`` against the float32 ``ref``, whether it is finite and within
    ``CHECK_BOUND`` for ``dtype``)."""
    err = float((out.float() - ref).norm() / ref.norm())
    return err, bool(torch.isfinite(out).all()) and err <= CHECK_BOUND[dtype]


def selection(quick: bool) -> tuple[list, list]:
    """(shapes, batches) of a --bench run: the table's, or --quick's smoke run."""
    return ([(11008, 4096)], [1, 4, 16, 512]) if quick else (SHAPES, BATCHES)


def check(formats, dtypes, shape=CHECK_SHAPE, device="cuda", cases=CHECK_CASES) -> list[str]:
    """Every regime of every kernel against ``formats.<fmt>.matmul_ref`` at full size; returns markdown rows
    (``device="cpu"`` under TRITON_INTERPRET=1 is the CPU dry run of this function)."""
    import importlib
    from llmprune.kernels import matmul_fn  # noqa: I001

    rows, n, k = [], *shape
    for fmt in formats:
        ref_fn = importlib.import_module(f"llmprune.formats.{fmt}").matmul_ref
        for dtype in dtypes:
            packed = random_packed(fmt, n, k, dtype, device=device)
            for m, regime in cases:
                x = torch.randn(m, k, device=device).to(dtype)
                out = torch.full((m, n), float("nan"), dtype=dtype, device=device)
                try:
                    matmul_fn(fmt)(x, packed, out=out, regime=regime)
                except Exception as exc:  # noqa: BLE001 (a kernel that fails to build or run is a FAIL row)
                    rows.append(f"| {fmt} | {str(dtype)[6:]} | {m} | {regime or 'auto'} | "
                                f"{type(exc).__name__}: {str(exc).splitlines()[0][:60]} | FAIL |")
                    print(rows[-1], flush=True)
                    continue
                ref = ref_fn(x, packed).float()
                err, ok = checked(out, ref, dtype)
                rows.append(f"| {fmt} | {str(dtype)[6:]} | {m} | {regime or 'auto'} | {err:.2e} | "
                            f"{'ok' if ok else 'FAIL'} |")
                print(rows[-1], flush=True)
    return rows


def bench_shape(fmt, n, k, dtype, batches, timer, copy_gbs, emit, records, device="cuda"):
    """Time the automatic regime (and, for select.py's crossovers, gemv and gemm at 2-16 tokens, gemm, dense and
    chunked from 64) against cuBLAS, and check every timed output against ``formats.<fmt>.matmul_ref`` (relative
    Frobenius error within CHECK_BOUND; the output is NaN-filled before each regime): the full-size correctness of
    the autotuned configs, for free. ``device="cpu"`` with a stand-in timer is the CPU dry run."""
    import importlib

    from torch.nn.functional import linear

    from llmprune.kernels import matmul_fn

    packed = random_packed(fmt, n, k, dtype, device=device)
    dense_w = (torch.randn(n, k, device=device) * 0.02).to(dtype)
    semi = None
    if fmt.startswith("sparse24") and device == "cuda":
        from llmprune.kernels.sparse24 import semi_structured_weight

        semi = semi_structured_weight(random_packed("sparse24", n, k, dtype))
    ratio = n * k * 2 / nbytes(packed.values())
    fn, ref_fn = matmul_fn(fmt), importlib.import_module(f"llmprune.formats.{fmt}").matmul_ref
    for m in batches:
        x = torch.randn(m, k, device=device).to(dtype)
        out = torch.empty(m, n, dtype=dtype, device=device)
        ref = ref_fn(x, packed).float()
        t_dense, _ = timer(lambda: linear(x, dense_w))
        t_semi = try_time(timer, lambda: linear(x, semi)) if semi is not None else None
        for regime in timed_regimes(m):
            out.fill_(float("nan"))
            try:
                t, graphed = timer(lambda: fn(x, packed, out=out, regime=regime))
            except RuntimeError as exc:  # a forced regime that fails costs its row only (GPU time is scarce)
                if regime is None:
                    raise
                why = str(exc).splitlines()[0][:80]
                emit(f"| {n}x{k} | {m} | {str(dtype)[6:]} | {fmt} | {regime} | failed: {why} |")
                continue
            err, ok = checked(out, ref, dtype)
            gbs = (nbytes(packed.values()) + nbytes([x, out])) / t / 1e3
            config = tuned_config(fmt, regime, m, x.device)
            records.append({"fmt": fmt, "n": n, "k": k, "m": m, "dtype": str(dtype)[6:], "regime": regime, "t": t,
                            "dense": t_dense, "bw": gbs / copy_gbs, "err": err, "ok": ok, "semi": t_semi,
                            "config": config})
            semi_txt = f"{t_semi / t:.2f}x" if t_semi else "-"
            emit(f"| {n}x{k} | {m} | {str(dtype)[6:]} | {fmt} | {regime or 'auto'} | {t:.1f} | {t_dense:.1f} | "
                 f"{t_dense / t:.2f}x | {semi_txt} | {gbs:.0f} | {100 * gbs / copy_gbs:.0f}% | {ratio:.2f} | "
                 f"{'graph' if graphed else 'eager'} | {config} | "
                 f"{err:.1e}{'' if ok else ' FAIL'} |")


def host_cost(formats, dtype, shape=(4096, 4096), device="cuda", calls: int = 300) -> list[str]:
    """Markdown rows: host (CPU) microseconds per batch-1 call, launches queued without synchronizing, of each
    format's launcher and of a ``PackedLinear`` forward (dispatch included) next to dense ``F.linear``. Eager decode
    pays this once per Linear per token: when it exceeds the kernel's GPU time, the GPU idles between launches and
    only CUDA graphs recover the kernel's speed (``llmprune bench --cuda-graphs``)."""
    import time

    from torch.nn.functional import linear

    from llmprune.kernels import matmul_fn
    from llmprune.packed_linear import PackedLinear

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    n, k = shape

    def per_call(fn) -> float:
        fn()
        sync()
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        host = time.perf_counter() - start
        sync()
        return host / calls * 1e6

    x = torch.randn(1, k, device=device).to(dtype)
    dense_w = (torch.randn(n, k, device=device) * 0.02).to(dtype)
    rows = [f"| dense F.linear | {per_call(lambda: linear(x, dense_w)):.1f} | - |"]
    for fmt in formats:
        packed = random_packed(fmt, n, k, dtype, device=device)
        module = PackedLinear.from_packed(packed, fmt, k)
        launcher = matmul_fn(fmt)
        rows.append(f"| {fmt} | {per_call(lambda: launcher(x, packed)):.1f} | {per_call(lambda: module(x)):.1f} |")
    return rows


def write_atomic(path: Path, text: str) -> None:
    """A reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def versions() -> str:
    import triton  # noqa: I001  (only on the GPU path)
    props = torch.cuda.get_device_properties(0)
    return (f"GPU: {props.name} ({props.total_memory >> 30} GiB, {props.multi_processor_count} SMs); "
            f"torch {torch.__version__}, CUDA {torch.version.cuda}, triton {triton.__version__}; "
            f"date {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")


def plan(args) -> int:
    """Print the autotuning a --bench run of one dtype starts with (kernel_plan.py): whether a stage fits the GPU
    machine's 10-minute call, or which BENCH_FORMATS split does."""
    from llmprune.kernels import select

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else select.DEFAULT_GPU
    shapes, batches = selection(args.quick)
    print(f"Autotuning of a first --bench run, one dtype, {len(shapes)} shapes x batches {batches}, dispatch of {gpu}:")
    print("\n| format | configs compiled | configs timed | minutes |\n|---|---|---|---|")
    print("\n".join(plan_rows(args.formats, shapes, batches, select.rules(gpu))))
    print(f"\nMinutes at {COMPILE_S} s per compile and {TIMED_S * 1e3:.0f} ms per timed config; shapes whose per-row "
          "counts are not multiples of 16 compile again (kernel_plan.py). --bench compiles them first on every CPU "
          "core (--precompile).")
    return 0


def precompile_in_child(argv) -> None:
    """Run ``--precompile`` for this run's selection in a child process: its compiles land in Triton's on-disk
    cache, where this process's autotuning finds them; should it fail (or crash), the autotuner compiles as usual."""
    import subprocess

    run = subprocess.run([sys.executable, __file__, *(sys.argv[1:] if argv is None else argv), "--precompile"])
    if run.returncode != 0:
        print(f"precompile exited with {run.returncode}; the autotuner compiles each config itself", flush=True)


def chosen(text: str, flag: str, valid: list[str]) -> list[str]:
    """The comma-separated names of ``flag``, checked before anything is imported or built (an unknown format used
    to surface as a ModuleNotFoundError traceback, deep in the run)."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [n for n in names if n not in valid]
    if unknown or not names:
        what = f"unknown {', '.join(map(repr, unknown))}" if unknown else "nothing given"
        raise UserInputError(f"{flag} {text!r}: {what}; choose from {','.join(valid)} (comma-separated)")
    return names


def no_gpu_message(args) -> str:
    """Why a run that needs CUDA did nothing on a machine without it, naming what did not happen."""
    skipped = [w for w, on in (("checked", args.check), ("measured", args.bench), ("installed", args.install),
                               ("precompiled", args.precompile)) if on]
    what = " or ".join([", ".join(skipped[:-1]), skipped[-1]] if len(skipped) > 1 else skipped)
    return (f"no CUDA GPU visible, so nothing was {what}; run it on a GPU machine (benchmarks/gpu_check.sh does the "
            "whole check; --plan works without one)")


def parse(argv):
    """The flags, ``--formats`` and ``--dtypes`` as checked lists (``UserInputError`` for an unknown name)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="full-size correctness against the torch references")
    ap.add_argument("--bench", action="store_true", help="the timing table")
    ap.add_argument("--formats", default=",".join(FORMATS), help=f"comma-separated, of {','.join(FORMATS)}")
    ap.add_argument("--dtypes", default=",".join(DTYPES), help=f"comma-separated, of {','.join(DTYPES)}")
    ap.add_argument("--quick", action="store_true", help="one shape, batches 1/4/16/512 (smoke run)")
    ap.add_argument("--pinned", action="store_true", help="no autotuning: fixed configs (compute-sanitizer runs)")
    ap.add_argument("--plan", action="store_true",
                    help="count the autotuning --bench starts with, per format (no GPU needed), and exit")
    ap.add_argument("--precompile", action="store_true",
                    help="only compile, on every CPU core, the autotune configs the --check/--bench run times "
                         "(those runs do it first, in a child process)")
    ap.add_argument("--install", action="store_true",
                    help="make this GPU's dispatch follow the measured crossovers ($LLMPRUNE_CACHE_DIR/crossovers/)")
    ap.add_argument("--results", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args(argv)
    args.formats = chosen(args.formats, "--formats", FORMATS)
    args.dtypes = chosen(args.dtypes, "--dtypes", DTYPES)
    if not (args.check or args.bench or args.plan):
        args.check = args.bench = True
    return args


def main(argv=None) -> int:
    try:
        args = parse(argv)
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.plan:
        return plan(args)
    if not torch.cuda.is_available():
        print(f"error: {no_gpu_message(args)}", file=sys.stderr)
        return 1
    formats, dtypes = args.formats, [getattr(torch, d) for d in args.dtypes]
    for fmt in formats if args.pinned else []:
        __import__(f"llmprune.kernels.{fmt}", fromlist=["KERNELS"]).KERNELS.pinned = True
    shapes, batches = selection(args.quick)
    if args.precompile and args.pinned:
        print("--pinned runs fixed configs, nothing is autotuned: nothing to precompile")
        return 0
    if args.precompile:  # what this selection's --check and --bench time (a child of the run, see below)
        precompile(formats, dtypes, {*(shapes if args.bench else []), *([CHECK_SHAPE] if args.check else [])},
                   sorted({*(batches if args.bench else []), *(m for m, _ in CHECK_CASES if args.check)}),
                   os.cpu_count() or 1)
        return 0
    if not args.pinned:
        precompile_in_child(argv)
    from llmprune.kernels.select import device_slug

    gpu_name = torch.cuda.get_device_name(0)
    gpu = device_slug(gpu_name)
    mode = "-".join(m for m, on in (("check", args.check), ("bench", args.bench), ("pinned", args.pinned)) if on)
    short = {"float16": "fp16", "bfloat16": "bf16"}
    name = f"{datetime.date.today()}-{gpu}-{mode}-{'-'.join(short.get(d, d) for d in args.dtypes)}"
    if formats != FORMATS:  # a subset run (gpu_check.sh BENCH_FORMATS) must not overwrite another subset's report
        name += "-" + "-".join(formats)
    lines = [f"# Kernel benchmark, {gpu}", "", versions(), ""]
    failed = False
    if args.check:
        rows = check(formats, dtypes, (1000, 1152) if args.pinned else CHECK_SHAPE)
        failed = any("FAIL" in r for r in rows)
        lines += ["## Correctness (rel. Frobenius error vs formats.<fmt>.matmul_ref)", "",
                  "| format | dtype | batch | regime | rel err | |", "|---|---|---|---|---|---|", *rows, ""]
    if args.bench:
        timer = Timer()
        copy_gbs = copy_bandwidth(timer)
        lines += [f"Copy bandwidth (512 MB device-to-device, read + write): {copy_gbs:.0f} GB/s", "",
                  "| shape (out x in) | batch | dtype | format | regime | µs | dense µs | vs dense | vs semi 2:4 | "
                  "GB/s | % copy BW | byte ratio | launch | tuned config | rel err |", "|" + "---|" * 15]
        partial = Path(args.results) / f"{name}.md.partial"
        partial.parent.mkdir(parents=True, exist_ok=True)
        with partial.open("w") as log:
            def emit(row):
                lines.append(row)
                print(row, file=log, flush=True)
                print(row, flush=True)

            records = []
            for n, k in shapes:
                for fmt in formats:
                    for dtype in dtypes:
                        bench_shape(fmt, n, k, dtype, batches, timer, copy_gbs, emit, records)
        partial.unlink()
        wrong = [r for r in records if not r["ok"]]
        failed = failed or bool(wrong)
        summary_lines = summary(records)
        lines += ["", f"Outputs checked against the references: {len(records) - len(wrong)} of {len(records)} within "
                  "bounds" + (f"; FAILED: {len(wrong)} (rows marked FAIL)" if wrong else ""), "", *summary_lines]
        lines += ["", f"Host µs per batch-1 call, {shapes[0][0]}x{shapes[0][1]}, {dtypes[0]} (eager launches, no sync; "
                  "eager decode pays this per Linear and token):", "", "| path | launcher µs | PackedLinear µs |",
                  "|---|---|---|", *host_cost(formats, dtypes[0], shapes[0])]
        print("\n".join(summary_lines))
        from llmprune.kernels import select

        measured = measured_rules(records, select.rules(gpu_name), gpu_name)
        table = Path(args.results) / f"{name}.crossovers.json"
        write_atomic(table, measured.to_json())
        lines += ["", f"Crossovers measured here ({table.name}; kernels/select.py reads such a table from "
                  f"kernels/crossovers/ or, with --install, the user cache):", "", *measured.describe()]
        if args.install:
            installed = cache_dir() / "crossovers" / f"{gpu}.json"
            write_atomic(installed, measured.to_json())
            print(f"dispatch on this GPU now follows {installed}")
    final = Path(args.results) / f"{name}.md"
    write_atomic(final, "\n".join(lines) + "\n")
    print(f"wrote {final}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
