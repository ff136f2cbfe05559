"""Host (Python) microseconds that llmprune adds to one batch-1 kernel call, measurable without a GPU.

Eager decode runs every Linear's launcher once per token; when the host work of a call exceeds the kernel's GPU time
(a few microseconds at batch 1), the GPU idles between launches. The GPU bench (``benchmarks/kernels.py``, host-cost
table) times the whole call there, Triton's own launch included. This script times the part that is ours — input
checks, packed-tensor checks, building the launch, regime choice, output allocation — on the CPU, with Triton's
interpreter build of the launchers and the final kernel launch replaced by a no-op:

    python benchmarks/host_overhead.py [--calls 2000] [--repeats 15] [--out benchmarks/results/host_overhead.md]

Columns: the functional launcher ``<fmt>_matmul(x, packed)`` (checks everything per call) and a ``PackedLinear``
forward (dispatch included; its launch is checked once and reused, ``llmprune/dispatch.py``). ``torch.empty`` of
the output is the floor every call pays. Thread CPU time, min over repeats (on this project's shared 2-core VM the
wall clock wanders by 2x between runs).
"""
from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import time
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported: the launchers take CPU tensors

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernel_inputs import random_packed  # noqa: E402

SHAPE = (4096, 4096)


def per_call(fn, calls: int, repeats: int) -> float:
    fn()
    best = float("inf")
    gc.disable()
    try:
        for _ in range(repeats):
            start = time.thread_time()
            for _ in range(calls):
                fn()
            best = min(best, (time.thread_time() - start) / calls * 1e6)
    finally:
        gc.enable()
    return best


def rows(calls: int, repeats: int) -> list[str]:
    from llmprune import dispatch
    from llmprune.kernels import FORMATS_WITH_KERNELS, _launch, matmul_fn
    from llmprune.packed_linear import PackedLinear

    _launch.launch = lambda *args, **kwargs: None  # everything up to Triton's launch, not the interpreted kernel
    dispatch._kernel_reason = lambda fmt, device, dtype: "kernel available"  # CPU inputs take the kernel path
    dispatch._launchers.update({fmt: dispatch.import_launcher(fmt) for fmt in FORMATS_WITH_KERNELS})
    n, k = SHAPE
    x = torch.randn(1, 1, k).half()  # transformers' decode shape: [batch, 1 token, features]
    floor = per_call(lambda: torch.empty(1, 1, n, dtype=x.dtype), calls, repeats)
    out = [f"| torch.empty (the output, the floor) | {floor:.1f} | - |"]
    for fmt in FORMATS_WITH_KERNELS:
        packed = random_packed(fmt, n, k, torch.float16, device="cpu")
        module = PackedLinear.from_packed(packed, fmt, k)
        launcher = matmul_fn(fmt)
        launch_us = per_call(lambda: launcher(x, packed), calls, repeats)
        module_us = per_call(lambda: module(x), calls, repeats)
        assert module.kernel_path == "triton", module.kernel_reason
        out.append(f"| {fmt} | {launch_us:.1f} | {module_us:.1f} |")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", type=Path, default=None, help="also write the table here (markdown)")
    args = parser.parse_args(argv)
    header = [f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
              f"{platform.python_version()}, torch {torch.__version__}; {SHAPE[0]}x{SHAPE[1]}, one fp16 token, "
              f"min of {args.repeats} x {args.calls} calls", "",
              "| format | launcher µs/call | PackedLinear µs/call |", "|---|---:|---:|"]
    text = "\n".join(header + rows(args.calls, args.repeats)) + "\n"
    print(text, end="")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
