"""Compile the Triton kernels for NVIDIA targets on a machine without a GPU (Triton ships ptxas), so tl.dot tile
limits, dtype rules and register/shared-memory blow-ups surface in CPU CI, not first on the GPU.

    python tests/kernels/compile_check.py [--full] [--arch 90,80] [--resources]

Must run without TRITON_INTERPRET (the interpreter replaces @triton.jit functions). Default: one config per kernel
and regime; ``--full``: every autotune config (minutes); ``--resources``: print registers and spill stack per
compiled kernel (cuobjdump -res-usage), the CPU-side hint of which configs cannot run fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

ACT = {"float16": "*fp16", "bfloat16": "*bf16"}
PTRS = {"q_ptr": "*u8", "z_ptr": "*u8", "m_ptr": "*u8", "gi_ptr": "*i16", "sc_ptr": "*u8", "zc_ptr": "*u8",
        "rp_ptr": "*i32", "oc_ptr": "*i16", "ws_ptr": "*fp32", "tk_ptr": "*i32", "map_ptr": "*i32"}
SHARED_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448}  # bytes per block (CUDA occupancy tables)
GROUPS = {"int4": 128, "sparse24_int4": 128, "group_sparse_int4": 16, "spqr": 16}
EXTRA_CONSTS = {"spqr": {"BITS": 3, "STAT_GROUP": 16}}  # SpQR w3 g16, second-level blocks of 16 rows


def signature(fn, fmt: str, dtype: str, consts: dict) -> dict:
    sig = {}
    for name in fn.arg_names:
        if name in consts:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = "*i32" if (fmt, name) == ("spqr", "q_ptr") else PTRS.get(name, ACT[dtype])
        else:
            sig[name] = "i32"
    return sig


def cases(fmt: str, full: bool):
    """(kernel name, constexprs) to compile for one format."""
    from llmprune.kernels import _configs as c

    base = {"GROUP": GROUPS.get(fmt)} if fmt in GROUPS else {}
    base.update(EXTRA_CONSTS.get(fmt, {}))
    kernels = importlib.import_module(f"llmprune.kernels.{fmt}").KERNELS
    blocks = (1, 4, 16)
    if full:  # the autotuner's own list (split-K configs included) as it prunes it for 1, 4 and 16 tokens
        gemv = list({id(cfg): cfg for bucket in blocks
                     for cfg in kernels.prune_gemv(kernels.gemv_tuned.configs, {"M_BUCKET": bucket})}.values())
    else:  # the pinned tile on the FMA path (1) and the widest block (tl.dot for 16), and one split-K config
        split = [cfg for cfg in kernels.gemv_tuned.configs if cfg.kwargs.get("SPLIT_K", 1) > 1][-1:]
        gemv = [triton.Config({**c.GPU_PINNED[0], "BLOCK_B": bb, **c.pipelining(bb)[-1]}) for bb in blocks[::2]]
        gemv += split
    gemm = c.gemm_configs() if full else [triton.Config(c.GPU_PINNED[1])]
    for cfg in gemv:
        yield "gemv", {**base, "DOT_F32": False, **cfg.kwargs}, _options(cfg)
    for cfg in gemm:
        yield "gemm", {**base, "DOT_F32": False, **cfg.kwargs}, _options(cfg)
    yield "dequant", {**base, "BLOCK_N": 32, "BLOCK_K": 128}, {}


def _options(cfg) -> dict:
    return {"num_warps": cfg.kwargs.get("num_warps", cfg.num_warps), "num_stages": cfg.num_stages}


def resources(kernel) -> str:
    """'REG:n STACK:m' of a compiled kernel, from the cuobjdump that ships with Triton."""
    import os
    import subprocess
    import tempfile

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        out = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True).stdout
    fields = next((line.split() for line in out.splitlines() if "REG:" in line), ["?", "?"])
    return " ".join(fields[:2])


DIVISIBLE = {"N", "K", "KG", "stride_xm", "stride_om", "UNIT"}  # multiples of 16 in the benchmark shapes but
# K = 11008, where GQSA keeps KG = 344 groups per row (instruction_mix.py --kept-groups)


def compile_one(fn, fmt: str, dtype: str, consts: dict, options: dict, arch: int, divisible=DIVISIBLE):
    """One kernel for sm_``arch``, specialized as Triton's launcher specializes it at run time for the benchmark
    shapes: pointers 16-byte aligned, sizes and strides multiples of 16 (this decides vectorized loads), except
    the int arguments left out of ``divisible``."""
    consts = {**{q.name: q.default for q in fn.params if q.is_constexpr and q.has_default}, **consts}  # as at launch
    sig = signature(fn, fmt, dtype, consts)
    attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(fn.arg_names)
             if sig.get(name, "constexpr") != "constexpr" and (name.endswith("_ptr") or name in divisible)}
    src = ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)


def compile_all(formats, dtypes, archs, full=False, report=False) -> list[str]:
    failures = []
    for fmt in formats:
        module = importlib.import_module(f"llmprune.kernels.{fmt}")
        for regime, consts, options in cases(fmt, full):
            fn = getattr(module, f"_{fmt}_{regime}_kernel")
            consts = {k: v for k, v in consts.items() if k in fn.arg_names and k != "num_warps"}
            for dtype in dtypes:
                for arch in archs:
                    try:
                        kernel = compile_one(fn, fmt, dtype, consts, options, arch)
                        if report:
                            blocks = {k: v for k, v in consts.items()
                                      if k.startswith("BLOCK") or k in ("SPLIT_K", "STAGES")}
                            print(f"{fmt} {regime} {dtype} sm_{arch} {blocks} {options} {resources(kernel)}")
                        if kernel.metadata.shared > SHARED_LIMIT[arch]:
                            failures.append(f"{fmt} {regime} {dtype} sm_{arch} {consts}: needs "
                                            f"{kernel.metadata.shared} B shared memory > {SHARED_LIMIT[arch]}")
                    except Exception as exc:  # report every failing case, not just the first
                        failures.append(f"{fmt} {regime} {dtype} sm_{arch} {consts}: {str(exc).splitlines()[0]}")
    return failures


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--arch", default="90")
    ap.add_argument("--formats", default="int4,sparse24,sparse24_int4,group_sparse_int4,spqr")
    ap.add_argument("--dtypes", default="float16,bfloat16")
    ap.add_argument("--resources", action="store_true")
    args = ap.parse_args(argv)
    start = time.time()
    failures = compile_all(args.formats.split(","), args.dtypes.split(","), [int(a) for a in args.arch.split(",")],
                           args.full, args.resources)
    print("\n".join(failures) or "all kernels compiled", f"({time.time() - start:.0f} s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
