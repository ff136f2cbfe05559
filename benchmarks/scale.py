"""Benchmark: wall time and peak memory of ``llmprune compress`` on a 1.1B-parameter model, per recipe, so a user can
tell what a bigger model will need before starting it.

The model is TinyLlama-1.1B-shaped (hidden 2048, MLP 5632, 22 layers, 32 heads / 4 key-value heads) with random
weights (std 0.02) and SmolLM2's tokenizer (vocabulary 49152): time and memory depend on the shapes, not on the
values, and no 1B checkpoint is reachable offline. Each recipe runs as its own ``llmprune compress`` process under
GNU time (``%M``: the process's peak resident set, model loading and saving included; ``%e``: wall seconds), and
the compress line's own seconds (the layer loop alone) are read from its summary.

    LLMPRUNE_DATA_DIR=../shared/data python benchmarks/scale.py   # -> results/scale_1b.md (over 45 min on 2 cores)
"""
from __future__ import annotations

import argparse
import datetime
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHAPE = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
             num_key_value_heads=4, max_position_embeddings=2048)
CALIB = ["--calib", "c4", "--nsamples", "4", "--seqlen", "512"]
RECIPES = {
    "magnitude 2:4": ["--method", "magnitude", "--sparsity", "2:4"],
    "magnitude 2:4, bfloat16 model": ["--method", "magnitude", "--sparsity", "2:4", "--dtype", "bfloat16"],
    "Wanda 2:4": ["--method", "wanda", "--sparsity", "2:4", *CALIB],
    "Wanda 50% + DSnoT": ["--method", "wanda", "--sparsity", "0.5", "--refine", "dsnot", *CALIB],
    "SparseGPT 2:4": ["--method", "sparsegpt", "--sparsity", "2:4", *CALIB],
    "SparseGPT 2:4 -> sparse24": ["--method", "sparsegpt", "--sparsity", "2:4", "--format", "sparse24", *CALIB],
    "SparseGPT 2:4, bfloat16 model": ["--method", "sparsegpt", "--sparsity", "2:4", "--dtype", "bfloat16", *CALIB],
    "SparseGPT 2:4 + GPTQ w4g128 -> sparse24_int4": ["--method", "sparsegpt", "--sparsity", "2:4", "--quant",
                                                      "w4g128", "--format", "sparse24_int4", *CALIB],
    "GQSA 50%@g16 + w4g16 -> group_sparse_int4": ["--method", "gqsa", "--sparsity", "0.5@g16", "--quant", "w4g16",
                                                  "--format", "group_sparse_int4", *CALIB],
    "SpQR w3g16 -> spqr": ["--quant", "w3g16", "--quantizer", "spqr", "--format", "spqr", *CALIB],
    "magnitude 2:4, --spill-to-disk": ["--method", "magnitude", "--sparsity", "2:4", "--spill-to-disk"],
    "magnitude 2:4 -> sparse24": ["--method", "magnitude", "--sparsity", "2:4", "--format", "sparse24"],
    "SparseGPT 2:4, --spill-to-disk": ["--method", "sparsegpt", "--sparsity", "2:4", "--spill-to-disk", *CALIB],
}


def build_model(directory: Path) -> int:
    """Write the random 1.1B model (float32 safetensors, as a downloaded checkpoint would be read) and return its
    parameter count."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from llmprune.model import resolve

    tokenizer_dir = Path(resolve("smollm2-135m").source["path"])
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(**SHAPE, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.02)
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return sum(p.numel() for p in model.parameters())


def _anonymous_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            return next((int(line.split()[1]) for line in status if line.startswith("RssAnon:")), 0)
    except (FileNotFoundError, ProcessLookupError):
        return 0


def memory_cgroup(limit_gib: float):
    """Put the process that calls the returned function (a ``preexec_fn``) and its children under a memory limit of
    ``limit_gib`` that counts the page cache they bring in, as a smaller machine would: a cgroup (v1 or v2; needs
    root). Clean pages of the mmapped checkpoint can be dropped under it; anonymous memory cannot (no swap)."""
    v1, v2 = Path("/sys/fs/cgroup/memory"), Path("/sys/fs/cgroup")
    limit = str(int(limit_gib * 2**30))
    if (v1 / "memory.limit_in_bytes").exists():
        group = v1 / "llmprune-scale"
        group.mkdir(exist_ok=True)
        (group / "memory.limit_in_bytes").write_text(limit)
    elif (v2 / "cgroup.controllers").exists():
        group = v2 / "llmprune-scale"
        group.mkdir(exist_ok=True)
        (group / "memory.max").write_text(limit)
    else:
        raise SystemExit("--memory-limit needs a cgroup memory controller (and root)")
    procs = group / "cgroup.procs"
    return lambda: procs.write_text(str(os.getpid()))


def drop_cached(model_dir: Path) -> None:
    """Evict the checkpoint's pages from the page cache, so a limited run reads them itself (pages cached by an
    earlier process stay charged to that process's cgroup, outside the limit)."""
    for shard in model_dir.glob("*.safetensors"):
        fd = os.open(shard, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def run(model_dir: Path, out: Path, args: list[str], limit_gib: float | None = None) -> dict:
    """One compress process; its peak resident set (GNU time) and, sampled every 50 ms, its peak anonymous memory:
    the resident set also counts pages of the mmapped safetensors files, which the kernel can drop at any time.
    With ``limit_gib`` the process runs under that memory limit (``memory_cgroup``) with the checkpoint uncached."""
    cmd = [sys.executable, "-m", "llmprune", "compress", str(model_dir), "-o", str(out), "--force", "--quiet", *args]
    enter = None
    if limit_gib is not None:
        drop_cached(model_dir)
        enter = memory_cgroup(limit_gib)
    with tempfile.TemporaryFile("w+") as out_file, tempfile.TemporaryFile("w+") as err_file:  # pipes could fill
        proc = subprocess.Popen(["/usr/bin/time", "-f", "TIME %e %M", *cmd], stdout=out_file, stderr=err_file,
                                text=True, preexec_fn=enter)
        peak_anon, child = 0, None
        while proc.poll() is None:
            child = child or next(iter(_children(proc.pid)), None)
            if child:
                peak_anon = max(peak_anon, _anonymous_kib(child))
            time.sleep(0.05)
        stdout, stderr = (f.seek(0) or f.read() for f in (out_file, err_file))
    time_line = re.search(r"TIME ([\d.]+) (\d+)", stderr)
    saved = re.search(r"in ([\d.]+) s", stdout + stderr)
    if proc.returncode or not time_line:
        tail = (stderr or stdout).strip().splitlines()[-3:]
        killed = "killed (out of memory under the limit)" if "signal 9" in stderr else ""
        return {"error": f"exit {proc.returncode}: {killed or ' / '.join(tail)}", "anon_gib": peak_anon / 2**20}
    return {"wall": float(time_line.group(1)), "peak_gib": int(time_line.group(2)) / 2**20,
            "anon_gib": peak_anon / 2**20, "compress": float(saved.group(1)) if saved else None}


def _children(pid: int) -> list[int]:
    import psutil

    try:
        return [child.pid for child in psutil.Process(pid).children()]
    except psutil.NoSuchProcess:
        return []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", help="run only recipes whose name contains this (repeatable)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "scale_1b.md")
    parser.add_argument("--memory-limit", type=float, metavar="GIB",
                        help="run each recipe under this memory limit (a cgroup; root), the checkpoint uncached")
    args = parser.parse_args()
    import torch
    import transformers

    rows = []
    with tempfile.TemporaryDirectory(prefix="llmprune-scale-") as tmp:
        model_dir = Path(tmp) / "tinyllama-shaped"
        params = build_model(model_dir)
        size_gib = sum(f.stat().st_size for f in model_dir.glob("*.safetensors")) / 2**30
        for name, recipe in RECIPES.items():
            if args.only and not any(part in name for part in args.only):
                continue
            result = run(model_dir, Path(tmp) / "out", recipe, args.memory_limit)
            print(name, result, flush=True)
            rows.append((name, result))
            shutil.rmtree(Path(tmp) / "out", ignore_errors=True)
    lines = [f"# `llmprune compress` on a 1.1B-parameter model ({datetime.date.today()})", "",
             f"Random-weight TinyLlama-1.1B shape ({params / 1e9:.2f} B parameters, {size_gib:.2f} GiB float32 "
             f"safetensors), SmolLM2 tokenizer; calibration C4 4 x 512 tokens where the recipe needs data; "
             f"{torch.get_num_threads()} CPU threads, torch {torch.__version__}, transformers "
             f"{transformers.__version__}. `LLMPRUNE_DATA_DIR=... python benchmarks/scale.py`.", "",
             *([f"Every run under a **{args.memory_limit:g} GiB memory limit** (a cgroup counting the page cache it "
                f"brings in; no swap), the checkpoint evicted from the page cache first "
                f"(`--memory-limit {args.memory_limit:g}`).", ""] if args.memory_limit else []),
             "| recipe | wall s (load + compress + save) | layer loop s | peak RSS GiB | peak anonymous GiB | "
             "anonymous / float32 model |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, r in rows:
        if "error" in r:
            lines.append(f"| {name} | {r['error']} | | | {r['anon_gib']:.2f} (when it stopped) | |")
        else:
            loop = f"{r['compress']:.1f}" if r["compress"] is not None else "?"
            lines.append(f"| {name} | {r['wall']:.1f} | {loop} | {r['peak_gib']:.2f} | {r['anon_gib']:.2f} | "
                         f"{r['anon_gib'] / size_gib:.2f}x |")
    args.out.write_text("\n".join(lines) + "\n")
    print(args.out.read_text())


if __name__ == "__main__":
    main()
