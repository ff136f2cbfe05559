"""Static instruction mix of the decode kernels' K loop on sm_90, from the SASS that Triton's bundled ptxas emits on
a machine without a GPU.

    python tests/kernels/instruction_mix.py [--formats int4,...] [--blocks 1,2,4,16] [--wide | --gemm] [--pipelined]
                                            [--out FILE.md]

Why: a batch-1 GEMV streams each weight byte once, so it reaches the memory bandwidth only if the SM issues few
enough instructions per byte. An H100 SM issues 128 thread-instructions per cycle and must consume ~14.5 bytes per
cycle (3.35 TB/s over 132 SMs at 1.755 GHz), so a loop above ~9 instructions per weight byte per thread cannot be
memory-bound, and int-to-float conversions (I2F, 16/cycle/SM), warp shuffles (SHFL) and barriers (BAR) cost more
than their count says. This is the CPU-side proxy we can iterate on between GPU sessions; timings still decide.

Method: compile one config per (format, BLOCK_B) with the run-time specialization (``compile_check.compile_one``),
disassemble with Triton's cuobjdump, take the first outermost backward branch as the K loop, count its instructions by
opcode, and divide by the packed weight bytes one thread streams per iteration.
"""
from __future__ import annotations

import argparse
import importlib
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import triton

sys.path.insert(0, str(Path(__file__).parent))
from compile_check import DIVISIBLE, EXTRA_CONSTS, GROUPS, compile_one, resources  # noqa: E402

from llmprune.kernels._configs import BIG_TILES, gemm_configs, pipelining  # noqa: E402

PREFERRED = [(16, 256, 4), (16, 128, 4), (16, 64, 4)]  # (BLOCK_N, BLOCK_K, warps): the longest K step that
# prune_gemv keeps for the token block (the autotuner's candidates; GPU_PINNED's rows)
ISSUE_PER_BYTE_LIMIT = 128 / 14.5  # thread-instructions per cycle per SM / bytes per cycle per SM at full bandwidth
SLOW = {"I2F": "I2F", "SHFL": "SHFL", "BAR": "BAR"}
MAX_I2F = 4  # per loop: the uint8 zero points of the tile's groups (one or two per row), never one per code


GQSA_DENSITY = 0.5  # group_sparse_int4's kept fraction on the dense-walk paths (W4S50, the benchmark's)


def weight_bytes(fmt: str, block_n: int, block_k: int, dense_walk: bool = False) -> float:
    """Packed weight bytes one program streams per K step (codes, 2:4 metadata; statistics left out). GQSA's K step
    counts kept columns on its gather paths (1-4 tokens) and dense columns on its dense walk (prefill, 16 tokens),
    which then reads GQSA_DENSITY of them."""
    per_row = {"int4": block_k / 2, "group_sparse_int4": block_k / 2, "sparse24_int4": block_k / 4 + block_k / 8,
               "sparse24": block_k + block_k / 8, "spqr": block_k * EXTRA_CONSTS["spqr"]["BITS"] / 8}[fmt]
    return block_n * per_row * (GQSA_DENSITY if dense_walk and fmt == "group_sparse_int4" else 1)


def sass(kernel) -> str:
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        return subprocess.run([tool, "-sass", f.name], capture_output=True, text=True, check=True).stdout


def loop_opcodes(text: str) -> Counter:
    """Opcodes (predicates stripped) of the K loop's body: the first loop in program order that no other loop
    contains (spqr's outlier loop follows its K loop and can be the longer one)."""
    code = []
    for line in text.splitlines():
        m = re.match(r"\s+/\*([0-9a-f]{4,})\*/\s+(.*?);", line)
        if m:
            code.append((int(m.group(1), 16), re.sub(r"^@!?U?P\w+\s+", "", m.group(2).strip())))
    loops = []
    for addr, ins in code:
        t = re.match(r"BRA\s+(?:\S+\s+)?0x([0-9a-f]+)", ins)
        if t and int(t.group(1), 16) < addr:
            loops.append((int(t.group(1), 16), addr))
    outer = [lp for lp in loops if not any(o != lp and o[0] <= lp[0] and lp[1] <= o[1] for o in loops)]
    if not outer:
        return Counter()
    first = min(outer)
    return Counter(ins.split()[0] for addr, ins in code if first[0] <= addr <= first[1])


def config_for(fmt: str, block_b: int) -> dict:
    configs = [triton.Config({"BLOCK_B": block_b, "BLOCK_N": n, "BLOCK_K": k}, num_warps=w) for n, k, w in PREFERRED]
    kernels = importlib.import_module(f"llmprune.kernels.{fmt}").KERNELS
    best = kernels.prune_gemv(configs, {"M_BUCKET": block_b})[0]
    return {**best.kwargs, "num_warps": best.num_warps}


def wide_mix(fmt: str, block_b: int, pipelined: bool = False) -> dict:
    """The lowest-count row among the autotuner's wide tiles (``_configs.BIG_TILES``: 64 B of int4 codes per thread
    per step), which the split-K paths exist for."""
    configs = [{"BLOCK_N": n, "BLOCK_K": k, "num_warps": w} for n, k, w in BIG_TILES]
    return min((mix(fmt, block_b, config=c, pipelined=pipelined) for c in configs), key=lambda r: r["per_byte"])


def gemm_mix(fmt: str, config) -> dict:
    """The prefill kernel's K loop at one of ``_configs.gemm_configs()`` (instructions per weight byte per thread; each
    weight byte then serves BLOCK_M tokens)."""
    fn = getattr(importlib.import_module(f"llmprune.kernels.{fmt}"), f"_{fmt}_gemm_kernel")
    consts = {k: v for k, v in {"GROUP": GROUPS.get(fmt), "DOT_F32": False, **EXTRA_CONSTS.get(fmt, {}),
                                **config.kwargs}.items() if k in fn.arg_names}
    kernel = compile_one(fn, fmt, "float16", consts, {"num_warps": config.num_warps,
                                                        "num_stages": config.num_stages}, 90)
    ops = loop_opcodes(sass(kernel))
    per_thread = weight_bytes(fmt, config.kwargs["BLOCK_N"], config.kwargs["BLOCK_K"], True) / (32 * config.num_warps)
    tile = "x".join(str(config.kwargs[k]) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))
    return {"format": fmt, "block_b": "prefill", "config": f"{tile} ({config.num_warps} warps)",
            "instructions": sum(ops.values()), "bytes_per_thread": per_thread,
            "per_byte": sum(ops.values()) / per_thread,
            **{name: sum(n for op, n in ops.items() if op.startswith(prefix)) for name, prefix in SLOW.items()},
            "loads": {op: n for op, n in ops.items() if op.startswith("LDG")},
            "spill": resources(kernel).split()[1]}


def mix(fmt: str, block_b: int, dtype: str = "float16", config: dict | None = None, pipelined: bool = False,
        kept_groups: int | None = None) -> dict:
    """One decode loop's row; ``pipelined``: the config's STAGES twin (``_configs.pipelining``; the 1-4 token blocks
    only), whose K loop follows a prologue that loads the first steps. ``kept_groups``: group_sparse_int4's KG as
    its launcher passes it (no multiple of 16: unspecialized, with ``kg_align``'s KG_ALIGN)."""
    config = {**(config or config_for(fmt, block_b)), **(pipelining(block_b)[-1] if pipelined else {})}
    module = importlib.import_module(f"llmprune.kernels.{fmt}")
    fn = getattr(module, f"_{fmt}_gemv_kernel")
    consts = {"GROUP": GROUPS.get(fmt), "DOT_F32": False, "BLOCK_B": block_b, "BLOCK_N": config["BLOCK_N"],
              "BLOCK_K": config["BLOCK_K"], "STAGES": config.get("STAGES"), **EXTRA_CONSTS.get(fmt, {})}
    divisible = DIVISIBLE
    if kept_groups is not None and fmt == "group_sparse_int4":
        consts["KG_ALIGN"] = module.kg_align(kept_groups)
        divisible = DIVISIBLE - ({"KG"} if kept_groups % 16 else set())
    consts = {k: v for k, v in consts.items() if k in fn.arg_names and v is not None}
    kernel = compile_one(fn, fmt, dtype, consts, {"num_warps": config["num_warps"], "num_stages": 2}, 90, divisible)
    ops = loop_opcodes(sass(kernel))
    spill = resources(kernel).split()[1]
    threads = 32 * config["num_warps"]
    per_thread = weight_bytes(fmt, config["BLOCK_N"], config["BLOCK_K"], block_b == 16) / threads
    total = sum(ops.values())
    slow = {name: sum(n for op, n in ops.items() if op.startswith(prefix)) for name, prefix in SLOW.items()}
    loads = {op: n for op, n in ops.items() if op.startswith("LDG")}
    return {"format": fmt, "block_b": block_b, "config": f"{config['BLOCK_N']}x{config['BLOCK_K']}"
            + (f" ({config['num_warps']} warps)" if config["num_warps"] != 4 else "")
            + (f", {config['STAGES']} stages" if "STAGES" in config else "")
            + (f", KG {kept_groups} (KG_ALIGN {consts['KG_ALIGN']})" if "KG_ALIGN" in consts else ""),
            "instructions": total, "bytes_per_thread": per_thread, "per_byte": total / per_thread, **slow,
            "loads": loads, "spill": spill}


def splitting_blocks(fmt: str) -> tuple:
    return tuple(importlib.import_module(f"llmprune.kernels.{fmt}").KERNELS.split_k)


def table(rows: list[dict]) -> str:
    lines = ["| format | tokens (BLOCK_B) | tile (BLOCK_[M x ]N x K) | loop instr / thread | weight B / thread "
             "| instr / B | I2F | SHFL | BAR | global loads | spill |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        loads = ", ".join(f"{op.removeprefix('LDG.E').lstrip('.') or '32'} x{n}"
                          for op, n in sorted(r["loads"].items()))
        lines.append(f"| {r['format']} | {r['block_b']} | {r['config']} | {r['instructions']} | "
                     f"{r['bytes_per_thread']:g} | "
                     f"{r['per_byte']:.1f} | {r['I2F']} | {r['SHFL']} | {r['BAR']} | {loads} | {r['spill']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--formats", default="int4,sparse24_int4,group_sparse_int4,sparse24,spqr")
    ap.add_argument("--blocks", default="1,2,4,16")
    ap.add_argument("--wide", action="store_true", help="the best of the wide split-K tiles instead of 16x256 "
                    "(one token, and 16 for int4)")
    ap.add_argument("--gemm", action="store_true", help="the prefill kernels at each tile of gemm_configs()")
    ap.add_argument("--pipelined", action="store_true", help="the 1-4 token blocks' STAGES twins (_configs.pipelining)")
    ap.add_argument("--kept-groups", type=int, help="group_sparse_int4's kept groups per row as launched (e.g. 344, "
                    "W4S50 g16 at K = 11008; default: a multiple of 16, as at K = 4096)")
    ap.add_argument("--out", help="also write the table (markdown) here")
    ap.add_argument("--check", action="store_true", help="exit 1 if a decode loop, pipelined or not, "
                    "converts codes with I2F, shuffles between lanes or spills (the regressions this table exposed)")
    args = ap.parse_args(argv)
    pairs = [(fmt, int(b)) for fmt in args.formats.split(",") for b in args.blocks.split(",")]
    if args.gemm:
        rows = [gemm_mix(fmt, c) for fmt in args.formats.split(",") for c in gemm_configs()]
    elif args.wide:
        rows = [wide_mix(fmt, b, args.pipelined) for fmt, b in pairs if b in splitting_blocks(fmt)]
    else:
        rows = [mix(fmt, b, pipelined=args.pipelined, kept_groups=args.kept_groups) for fmt, b in pairs]
    if args.check:
        rows += [mix(fmt, b, pipelined=not args.pipelined, kept_groups=args.kept_groups)  # both variants
                 for fmt, b in pairs if len(pipelining(b)) > 1]
        bad = [f"{r['format']} BLOCK_B={r['block_b']} {r['config']}: I2F {r['I2F']}, SHFL {r['SHFL']}, {r['spill']}"
               for r in rows if r["I2F"] > MAX_I2F or r["SHFL"] or r["spill"] != "STACK:0"]
        print("\n".join(bad) or "decode loops: no code conversions by I2F, no shuffles, no spills")
        return 1 if bad else 0
    tiles = "prefill kernels" if args.gemm else "the best wide tile" if args.wide else "4 warps"
    text = (f"{tiles}, fp16, sm_90, triton {triton.__version__}. Memory-bound needs < "
            f"{ISSUE_PER_BYTE_LIMIT:.1f} instr/B (see the docstring).\n\n" + table(rows))
    print(text)
    if args.out:
        tmp = Path(args.out).with_suffix(".tmp")
        tmp.write_text(text + "\n")
        os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
