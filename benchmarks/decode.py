"""End-to-end decode throughput table for issue 6 ("End to end"): packed Llama-shaped models vs dense on one GPU.

    python benchmarks/decode.py [llama-7b|llama3-8b|PATH] [--formats ...] [--batch 1,16] [--new-tokens 128]
                                [--dtype float16] [--no-graphs] [--results DIR] [--cpu-dry-run]

Runs ``llmprune.evals.bench.run_bench`` (the logic behind ``llmprune bench``) with the eager and the static-KV-cache
+ captured CUDA-graph variants (``--compile`` adds torch.compile of the decode step) and writes ``<results>/<date>-<gpu>-decode.md``
atomically (temp file + rename), with the JSON of the run embedded. Without CUDA it prints a message and exits 0;
``--cpu-dry-run`` runs the ``tiny`` shape on CPU (reference matmuls) to check the plumbing only.

Under ``torch.compile`` each kernel call is one opaque node (``llmprune::packed_matmul``, llmprune/dispatch.py), so
the decode step compiles without a graph break per Linear (tests/kernels/test_kernels_compile.py); the launchers'
Python still runs per call unless the graph is also CUDA-graphed. The CUDA-graph variant needs no compile.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path

import torch


def main(argv=None) -> int:
    from llmprune.evals.bench import FORMATS, format_table, run_bench

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default="llama-7b")
    ap.add_argument("--formats", default=",".join(f for f in FORMATS if f != "dense"))
    ap.add_argument("--batch", default="1,16")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--dtype", default="float16")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-graphs", action="store_true", help="Eager only.")
    ap.add_argument("--compile", action="store_true", help="Also the torch.compile variant (slow to compile).")
    ap.add_argument("--results", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--cpu-dry-run", action="store_true")
    args = ap.parse_args(argv)
    if args.cpu_dry_run:
        result = run_bench("tiny", args.formats.split(","), [1, 2], new_tokens=4, prompt_len=4, device="cpu",
                           dtype="float32", runs=1)
        print(format_table(result))
        return 0
    if not torch.cuda.is_available():
        print("benchmarks/decode.py: no CUDA device; nothing measured (use --cpu-dry-run to check the plumbing)")
        return 0
    variants = ["eager"] + ([] if args.no_graphs else ["static+cudagraphs"]) + (["static+compile"] if args.compile
                                                                              else [])
    result = run_bench(args.model, args.formats.split(","), [int(b) for b in args.batch.split(",")],
                       new_tokens=args.new_tokens, prompt_len=args.prompt_len, device="cuda", dtype=args.dtype,
                       variants=variants, runs=args.runs)
    text = format_table(result)
    print(text)
    gpu = torch.cuda.get_device_name().replace(" ", "-")
    out = Path(args.results) / f"{datetime.date.today():%Y-%m-%d}-{gpu}-decode.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".md.tmp")
    tmp.write_text(f"# Decode throughput ({args.model})\n\n{text}\n\n```json\n{json.dumps(result, indent=2)}\n```\n")
    os.replace(tmp, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
