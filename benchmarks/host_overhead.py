"""Host (Python) microseconds that llmprune adds to one batch-1 kernel call, measurable without a GPU.

Eager decode runs every Linear's launcher once per token; when the host work of a call exceeds the kernel's GPU time
(a few microseconds at batch 1), the GPU idles between launches. The GPU bench (``benchmarks/kernels.py``, host-cost
table) times the whole call there. This script times all of it but Triton's JIT launch itself — input checks,
packed-tensor checks, building the launch, regime choice, output allocation, and Triton's autotuner where a call goes
through it — on the CPU: the launchers take the autotuned path as on a GPU (a stand-in timer picks a config the first
time), and the JIT kernel's ``run`` is a no-op.

    python benchmarks/host_overhead.py [--calls 300] [--repeats 60] [--out benchmarks/results/host_overhead.md]

A second table times the seven Linears of one Llama-2-7B decoder block at one token, as transformers calls them, and
the same block with q/k/v and gate/up merged (``llmprune.merge_projections``: four launches, three slices that take
their columns of a shared result).

Columns: the functional launcher ``<fmt>_matmul(x, packed)`` (checks the packed tensors and asks the autotuner on
every call); a ``PackedLinear`` forward as it runs now (dispatch included; its launch checked once, the autotuner's
choice reused and, from the third call of as many tokens, the whole launch replayed: ``llmprune/dispatch.py``,
``kernels/_launch.launch`` and ``Call.replays``); the same with the autotuner asked on every call. ``torch.empty`` of the output is the floor every call pays. Thread CPU time, min over repeats (on this project's
shared 2-core VM the wall clock wanders by 2x between runs).
"""
from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import time
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported: kernels that need no GPU to exist

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


class Forgetful(dict):
    """A ``Call.chosen`` memo that keeps nothing: every launch asks the autotuner (the third column)."""

    def __setitem__(self, key, value):
        pass


def as_on_a_gpu(pairs, run=None) -> None:
    """Launches take the autotuned twins, the first autotuning of a key picks the first config without timing it,
    and the JIT kernels run nothing, or ``run(*args, grid, warmup, **kwargs)`` in place of Triton's ``run`` (what
    remains is the host work before Triton's own launch). Also tests/kernels/direct_launch_check.py's setting."""
    from llmprune.kernels import _launch

    flatten = _launch.flatten_input
    _launch.flatten_input = lambda x, k, fmt, interpret: flatten(x, k, fmt, True)  # CPU inputs accepted
    for pair in pairs:
        pair.interpret = False
        for kernel, tuned in ((pair.gemv, pair.gemv_tuned), (pair.gemm, pair.gemm_tuned)):
            kernel.run = run or (lambda *args, grid, warmup, **kwargs: None)
            tuned.cache_results = False
            tuned._bench = lambda *args, config, **kwargs: [1.0, 1.0, 1.0]


def rows(calls: int, repeats: int) -> list[str]:
    import dataclasses
    import importlib

    from llmprune import dispatch
    from llmprune.kernels import FORMATS_WITH_KERNELS, matmul_fn
    from llmprune.packed_linear import PackedLinear

    as_on_a_gpu([importlib.import_module(f"llmprune.kernels.{fmt}").KERNELS for fmt in FORMATS_WITH_KERNELS])
    dispatch._kernel_reason = lambda fmt, device, dtype: "kernel available"  # CPU inputs take the kernel path
    dispatch._launchers.update({fmt: dispatch.import_launcher(fmt) for fmt in FORMATS_WITH_KERNELS})
    n, k = SHAPE
    x = torch.randn(1, 1, k).half()  # transformers' decode shape: [batch, 1 token, features]
    floor = per_call(lambda: torch.empty(1, 1, n, dtype=x.dtype), calls, repeats)
    out = [f"| torch.empty (the output, the floor) | {floor:.1f} | - | - |"]
    for fmt in FORMATS_WITH_KERNELS:
        packed = random_packed(fmt, n, k, torch.float16, device="cpu")
        module, asking = PackedLinear.from_packed(packed, fmt, k), PackedLinear.from_packed(packed, fmt, k)
        asking(x)
        plan = asking._kernel_plan
        asking._kernel_plan = plan._replace(prepared=dataclasses.replace(plan.prepared, chosen=Forgetful()))
        launcher = matmul_fn(fmt)
        times = [per_call(fn, calls, repeats) for fn in (lambda: launcher(x, packed), lambda: module(x),
                                                         lambda: asking(x))]
        assert module.kernel_path == "triton" and module._kernel_plan.prepared.chosen, module.kernel_reason
        out.append(f"| {fmt} | " + " | ".join(f"{t:.1f}" for t in times) + " |")
    return out


BLOCK = {"self_attn": {"q_proj": (4096, 4096), "k_proj": (4096, 4096), "v_proj": (4096, 4096),
                       "o_proj": (4096, 4096)},
         "mlp": {"gate_proj": (11008, 4096), "up_proj": (11008, 4096), "down_proj": (4096, 11008)}}  # Llama-2-7B


def block_rows(calls: int, repeats: int) -> list[str]:
    """Per format: µs for one token through the block's seven Linears (as LlamaAttention and LlamaMLP call them:
    the q/k/v input shared, gate/up likewise), unmerged and merged. Run after ``rows`` (the GPU-path setting)."""
    import copy

    from torch import nn

    from llmprune.kernels import FORMATS_WITH_KERNELS
    from llmprune.merged_projections import merge_projections
    from llmprune.packed_linear import PackedLinear

    out = []
    x, h = torch.randn(1, 1, 4096).half(), torch.randn(1, 1, 11008).half()
    for fmt in FORMATS_WITH_KERNELS:
        block = nn.Module()
        for part, shapes in BLOCK.items():
            block.add_module(part, nn.Module())
            for i, (name, (n, k)) in enumerate(shapes.items()):
                packed = random_packed(fmt, n, k, torch.float16, seed=i, device="cpu")
                getattr(block, part).add_module(name, PackedLinear.from_packed(packed, fmt, k))

        merged_block = copy.deepcopy(block)
        merged = merge_projections(merged_block)
        assert merged == ["self_attn.q_proj_k_proj_v_proj", "mlp.gate_proj_up_proj"], merged

        def step(block):
            attn, mlp = block.self_attn, block.mlp
            attn.q_proj(x), attn.k_proj(x), attn.v_proj(x), attn.o_proj(x)
            mlp.gate_proj(x), mlp.up_proj(x), mlp.down_proj(h)

        before = after = float("inf")
        for _ in range(repeats):  # interleaved, so that a slow spell of the VM hits both
            before = min(before, per_call(lambda: step(block), calls, 1))
            after = min(after, per_call(lambda: step(merged_block), calls, 1))
        assert all(merged_block.get_submodule(name).kernel_path == "triton" for name in merged)
        out.append(f"| {fmt} | {before:.1f} | {after:.1f} | {before / after:.2f}x |")
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
              "| format | launcher µs/call | PackedLinear µs/call | PackedLinear, autotuner every call |",
              "|---|---:|---:|---:|"]
    block = ["", "One Llama-2-7B decoder block's seven Linears, one fp16 token (µs per block):", "",
             "| format | unmerged (7 launches) | q/k/v and gate/up merged (4 launches) | ratio |",
             "|---|---:|---:|---:|"]
    text = "\n".join(header + rows(args.calls, args.repeats) + block + block_rows(args.calls // 4 or 1,
                                                                                  args.repeats)) + "\n"
    print(text, end="")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
