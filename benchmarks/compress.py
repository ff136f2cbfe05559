"""Benchmark: wall time and peak RSS of each pruning method on a real model, next to llm-compressor's ``oneshot``.

Both tools get the same model folder, the same calibration token windows (C4, seeded) and run in fresh processes,
so time and memory are comparable: "seconds" is the pruning call alone (model load and saving excluded), "peak RSS"
the process's maximum resident set during that call (VmHWM, reset right after loading so that load-time transients
of ``from_pretrained`` do not count), "added" the peak minus the RSS right after the model was loaded.

    python benchmarks/compress.py --nsamples 64 --seqlen 512 --sparsity 2:4 \
        --llmcompressor-python /opt/lc-venv/bin/python --ppl        # writes benchmarks/results/compress.md

llm-compressor pins other transformers/compressed-tensors versions than llmprune, so it lives in its own virtualenv:
``python -m venv /opt/lc-venv && /opt/lc-venv/bin/pip install torch==2.13.0 llmcompressor==0.14.0.1``.
Its MagnitudePruningModifier prunes nothing under ``oneshot``, so magnitude is timed for llmprune only.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def calibration_file(model_spec: str, nsamples: int, seqlen: int, seed: int, workdir: Path) -> tuple[Path, Path, str]:
    from safetensors.torch import save_file

    from llmprune import Calibration
    from llmprune.data.calibration import calibration_windows
    from llmprune.model import resolve

    loaded = resolve(model_spec)
    calib = calibration_windows(loaded.tokenizer, Calibration("c4", nsamples, seqlen, seed))
    path = workdir / "calib.safetensors"
    save_file({"ids": calib.ids.contiguous()}, str(path))
    return Path(loaded.source["path"]), path, calib.sha256


def run_one(python: str, script: str, args: list[str], result: Path) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([python, str(HERE / script), *args, str(result)], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(result.read_text())


def perplexity_of(folder: Path, tokenizer_dir: Path, seqlen: int, max_windows: int | None) -> float:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmprune.evals.perplexity import load_eval_text, perplexity

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)  # the runs save weights + config only
    return perplexity(model, tokenizer, load_eval_text("wikitext2").text, seqlen=seqlen, progress=False,
                      max_windows=max_windows).ppl


def table(rows: list[dict], header: str) -> str:
    lines = [header, "", "| tool | method | sparsity | forwards | seconds | peak RSS MiB | added MiB | achieved | WikiText-2 ppl |",
             "|---|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['tool']} | {r['method']} | {r['sparsity']} | {r.get('forward_dtype', 'float32')} | error: {r['error']} | | | | |")
            continue
        ppl = f"{r['ppl']:.3f}" if r.get("ppl") else "—"
        lines.append(f"| {r['tool']} | {r['method']} | {r['sparsity']} | {r.get('forward_dtype', 'float32')} | {r['seconds']:.1f} | {r['peak_rss_mib']:.0f} | "
                     f"{r['peak_rss_mib'] - r['rss_loaded_mib']:.0f} | {r['achieved_sparsity']:.4f} | {ppl} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--methods", default="magnitude,wanda,sparsegpt")
    parser.add_argument("--sparsity", default="2:4", help="comma-separated, e.g. 0.5,2:4")
    parser.add_argument("--refine", default="", help="also run each method with this refiner (e.g. dsnot)")
    parser.add_argument("--nsamples", type=int, default=64)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--llmcompressor-python", default="", help="python of a venv with llmcompressor installed")
    parser.add_argument("--ppl", action="store_true", help="also evaluate WikiText-2 test perplexity of each result")
    parser.add_argument("--ppl-seqlen", type=int, default=2048)
    parser.add_argument("--ppl-windows", type=int, default=0, help="score only the first N windows (0: all)")
    parser.add_argument("--forward-dtypes", default="float32",
                        help="llmprune calibration-forward dtypes to time, comma-separated (e.g. float32,bfloat16)")
    parser.add_argument("--out", default=str(HERE / "results" / "compress.md"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_dir, calib, sha = calibration_file(args.model, args.nsamples, args.seqlen, args.seed, work)
        jobs = []
        for sparsity in args.sparsity.split(","):
            for method in args.methods.split(","):
                dtypes = args.forward_dtypes.split(",") if method != "magnitude" else ["float32"]  # no forwards
                for dtype in dtypes:
                    jobs.append((sys.executable, "_llmprune_run.py", method, sparsity, "", dtype))
                    if args.refine:
                        jobs.append((sys.executable, "_llmprune_run.py", method, sparsity, args.refine, dtype))
                if args.llmcompressor_python and method in ("wanda", "sparsegpt"):
                    jobs.append((args.llmcompressor_python, "_llmcompressor_run.py", method, sparsity, "", ""))
        for index, (python, script, method, sparsity, refine, dtype) in enumerate(jobs):
            out = work / f"model{index}"
            tool = "llm-compressor" if "llmcompressor" in script else "llmprune"
            label = method + (f"+{refine}" if refine else "")
            print(f"[{index + 1}/{len(jobs)}] {tool} {label} {sparsity} {dtype}", flush=True)
            argv = [str(model_dir), str(calib), label, sparsity, str(out)] + ([dtype] if dtype else [])
            result = run_one(python, script, argv, work / f"result{index}.json")
            result.setdefault("tool", tool)
            result.setdefault("method", method)
            result.setdefault("sparsity", sparsity)
            if args.ppl and "error" not in result:
                result["ppl"] = perplexity_of(out, model_dir, args.ppl_seqlen, args.ppl_windows or None)
            print(json.dumps(result), flush=True)
            rows.append(result)
    header = (f"## Compression benchmark — {args.model}, {datetime.date.today()}\n\n"
              f"CPU: {os.cpu_count()} cores, torch threads {__import__('torch').get_num_threads()}, float32. "
              f"Calibration: {args.nsamples} x {args.seqlen} tokens of C4 (seed {args.seed}, sha256 {sha[:12]}). "
              f"Perplexity: WikiText-2 test, seqlen {args.ppl_seqlen}"
              + (f", first {args.ppl_windows} windows." if args.ppl_windows else ", all windows."))
    text = table(rows, header)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
