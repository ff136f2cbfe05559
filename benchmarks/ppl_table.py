"""WikiText-2 test perplexity of a model, dense and pruned by each method at each sparsity (issue 2's table).

Each cell compresses a fresh copy of the model with the same calibration windows and evaluates the papers' protocol
(test rows joined with "\n\n", one tokenization, non-overlapping windows of --ppl-seqlen, tail dropped). Results are
appended to a JSONL file as they come, so an interrupted run resumes where it stopped; the markdown table is rebuilt
from that file.

    LLMPRUNE_DATA_DIR=../shared/data python benchmarks/ppl_table.py --nsamples 64 --seqlen 512
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def cells(methods: list[str], sparsities: list[str], refine: str) -> list[tuple[str, str, str]]:
    out = [("dense", "", "")]
    for sparsity in sparsities:
        for method in methods:
            out.append((method, sparsity, ""))
            if refine:
                out.append((method, sparsity, refine))
    return out


def key(method: str, sparsity: str, refine: str, args) -> str:
    return f"{method}|{sparsity}|{refine}|{args.calib}|{args.nsamples}x{args.seqlen}|seed{args.seed}|ppl{args.ppl_seqlen}"


def run_cell(method, sparsity, refine, args, calib_cache: dict) -> dict:
    from llmprune import Calibration, Recipe, compress_, parse_sparsity
    from llmprune.data.calibration import calibration_windows
    from llmprune.evals.perplexity import load_eval_text, perplexity
    from llmprune.model import resolve

    loaded = resolve(args.model)
    row = {"method": method, "sparsity": sparsity or "dense", "refine": refine or None}
    if method != "dense":
        if "calib" not in calib_cache:
            calib_cache["calib"] = calibration_windows(
                loaded.tokenizer, Calibration(args.calib, args.nsamples, args.seqlen, args.seed), model=loaded.model)
        calib = calib_cache["calib"]
        recipe = Recipe(method=method, sparsity=parse_sparsity(sparsity), refine=refine or None)
        start = time.perf_counter()
        report = compress_(loaded.model, recipe, calib, progress=False)
        row.update(compress_seconds=round(time.perf_counter() - start, 1), achieved=report.achieved_sparsity(),
                   calib_sha256=calib.sha256)
    text = load_eval_text("wikitext2")
    start = time.perf_counter()
    result = perplexity(loaded.model, loaded.tokenizer, text.text, seqlen=args.ppl_seqlen, progress=False,
                        dataset=text.name)
    row.update(ppl=result.ppl, windows=result.windows, tokens=result.tokens, ppl_seqlen=result.seqlen,
               eval_seconds=round(time.perf_counter() - start, 1))
    return row


def markdown(rows: list[dict], args) -> str:
    lines = [f"WikiText-2 test perplexity, {args.model}, float32 on CPU. Calibration: {args.nsamples} x {args.seqlen} "
             f"tokens of {args.calib} (seed {args.seed}). Perplexity protocol: seqlen {args.ppl_seqlen}, "
             f"non-overlapping windows, tail dropped.", "",
             "| method | " + " | ".join(args.sparsities) + " |", "|---|" + "---:|" * len(args.sparsities)]
    dense = next((r for r in rows if r["method"] == "dense"), None)
    if dense:
        lines.append("| dense | " + " | ".join(f"{dense['ppl']:.2f}" for _ in args.sparsities) + " |")
    labels = []
    for r in rows:
        label = r["method"] + (f"+{r['refine']}" if r.get("refine") else "")
        if r["method"] != "dense" and label not in labels:
            labels.append(label)
    for label in labels:
        by = {r["sparsity"]: r for r in rows if r["method"] + (f"+{r['refine']}" if r.get("refine") else "") == label}
        lines.append(f"| {label} | " + " | ".join(f"{by[s]['ppl']:.2f}" if s in by else "—" for s in args.sparsities)
                     + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--methods", default="magnitude,wanda,sparsegpt")
    parser.add_argument("--sparsity", default="0.5,4:8,2:4")
    parser.add_argument("--refine", default="")
    parser.add_argument("--calib", default="c4")
    parser.add_argument("--nsamples", type=int, default=64)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ppl-seqlen", type=int, default=2048)
    parser.add_argument("--results", default=str(HERE / "results" / "ppl_table.jsonl"))
    parser.add_argument("--out", default=str(HERE / "results" / "ppl_table.md"))
    args = parser.parse_args()
    args.sparsities = args.sparsity.split(",")
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    done = {json.loads(line)["key"]: json.loads(line) for line in results.read_text().splitlines()} \
        if results.exists() else {}
    calib_cache: dict = {}
    for method, sparsity, refine in cells(args.methods.split(","), args.sparsities, args.refine):
        k = key(method, sparsity, refine, args) if method != "dense" else f"dense|ppl{args.ppl_seqlen}"
        if k in done:
            continue
        row = {"key": k, **run_cell(method, sparsity, refine, args, calib_cache)}
        print(json.dumps(row), flush=True)
        with results.open("a") as f:
            f.write(json.dumps(row) + "\n")
        done[k] = row
    rows = [r for k, r in done.items() if k.startswith("dense") or k.endswith(
        f"|{args.calib}|{args.nsamples}x{args.seqlen}|seed{args.seed}|ppl{args.ppl_seqlen}")]
    Path(args.out).write_text(markdown(rows, args))
    print(markdown(rows, args))


if __name__ == "__main__":
    main()
