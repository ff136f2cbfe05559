"""Does a plan's direct launch hand the JIT kernel what Triton's autotuner would? Run it with the triton at hand:

    python tests/kernels/direct_launch_check.py        # e.g. in a venv with the GPU machine's triton 3.6

Why a script: ``PackedLinear`` launches go through ``Autotuner.run`` once per (regime, token bucket, dtype) and then
straight to the JIT kernel with the chosen config (``kernels/_launch.launch``), so the two calls must reach
``JITFunction.run`` with the same arguments, grid and meta-parameters on every triton version we run on, and so must
the third, which replays the second's launch (``Call.replays``). The test
suite asserts it under its own triton (tests/kernels/test_kernels_plan.py); the GPU machine's triton 3.6 cannot run
our kernels in its interpreter, so here the kernel's ``run`` only records what it is given (no GPU needed). Exit
status 1 when the two launches differ.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"  # the kernels need no GPU to exist; nothing is executed

import torch  # noqa: E402
import triton  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))


def main() -> int:
    from host_overhead import as_on_a_gpu
    from kernel_inputs import random_packed

    from llmprune.kernels import int4

    pair, calls = int4.KERNELS, []

    def record(*args, grid, warmup, **kwargs):
        named = {**dict(zip(pair.gemv.arg_names, args)), **kwargs}
        calls.append((len(args), grid(named) if callable(grid) else grid, kwargs))

    as_on_a_gpu([pair], run=record)  # the autotuned path as on a GPU, the kernel's run recorded
    call = int4.prepare(random_packed("int4", 4096, 4096, torch.float16, device="cpu"), torch.device("cpu"), 4096)
    x = torch.randn(1, 4096).half()
    for _ in range(3):
        pair.matmul(x, call, None, None)
    (first, second, third) = calls
    assert call.replays, "the third launch was not a replay"
    print(f"triton {triton.__version__}\n  autotuner: {first}\n  direct:    {second}\n  replay:    {third}")
    same = first == second == third
    print("identical launches" if same else "LAUNCHES DIFFER")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
