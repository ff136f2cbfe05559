"""MoE calibration on real weights: SmolLM2-135M sparse-upcycled into a Mixtral (4 experts, top-2), pruned with each
expert calibrated on its routed tokens (default) or on every token (``--calib-experts all``).

No MoE checkpoint is reachable offline, so ``evals.upcycle`` builds one from SmolLM2: every expert starts as the dense
MLP, the routers are random, and the upcycled model computes what SmolLM2 does (its perplexity is printed next to
SmolLM2's as the check). Pruning then separates the experts: routed calibration gives each expert masks for the
tokens it serves; all-expert calibration gives every expert the dense MLP's masks. The table also shows how many
calibration tokens the least- and most-used expert of each layer received.

    LLMPRUNE_DATA_DIR=../shared/data python benchmarks/moe_upcycled.py --nsamples 32 --seqlen 512 --ppl-max-windows 32

Results: ``benchmarks/results/moe_upcycled.md`` (appended to ``moe_upcycled.jsonl`` cell by cell, so a run resumes).
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
CELLS = [("dense", "", ""), ("upcycled", "", ""), ("upcycled", "wanda", "routed"), ("upcycled", "wanda", "all"),
         ("upcycled", "sparsegpt", "routed"), ("upcycled", "sparsegpt", "all"), ("dense", "wanda", ""),
         ("dense", "sparsegpt", "")]


def _expert_tokens(moe, ids: torch.Tensor) -> list[int]:
    """Calibration tokens per expert, summed over layers, routed by the dense upcycled model."""
    counts = []
    hooks = [layer.mlp.gate.register_forward_hook(lambda m, a, out: counts.append(torch.bincount(
        out[2].flatten(), minlength=out[0].shape[-1]))) for layer in moe.model.layers]
    with torch.no_grad():
        for row in ids:
            moe(row[None], use_cache=False)
    for h in hooks:
        h.remove()
    per_layer = torch.stack(counts).view(-1, len(moe.model.layers), counts[0].numel()).sum(0)
    return [int(per_layer.min()), int(per_layer.max())]


def run_cell(model_kind: str, method: str, experts: str, args, base) -> dict:
    from llmprune import Recipe, compress_, parse_sparsity
    from llmprune.data.calibration import calibration_windows
    from llmprune.evals.perplexity import load_eval_text, perplexity
    from llmprune.evals.upcycle import upcycle_llama
    from llmprune.recipe import Calibration

    model = copy.deepcopy(base.model)
    if model_kind == "upcycled":
        model = upcycle_llama(model, experts=args.experts, top_k=args.top_k, seed=args.seed)
    record = {"model": model_kind, "method": method or "dense", "experts": experts, "sparsity": args.sparsity if method
              else "", "nsamples": args.nsamples, "seqlen": args.seqlen, "ppl_max_windows": args.ppl_max_windows}
    t0 = time.perf_counter()
    if method:
        calib = calibration_windows(base.tokenizer, Calibration(source="c4", nsamples=args.nsamples,
                                                                seqlen=args.seqlen, seed=args.seed))
        if model_kind == "upcycled":
            record["tokens_min_max_expert"] = _expert_tokens(model, calib.ids)
        recipe = Recipe(method=method, sparsity=parse_sparsity(args.sparsity), experts=experts or "routed")
        report = compress_(model, recipe, calib, batch_size=args.batch_size, progress=True)
        record.update(achieved=round(report.achieved_sparsity(), 4), uncalibrated=len(report.uncalibrated()))
    record["compress_seconds"] = round(time.perf_counter() - t0, 1)
    text = load_eval_text("wikitext2")
    result = perplexity(model, base.tokenizer, text.text, seqlen=args.ppl_seqlen, max_windows=args.ppl_max_windows,
                        dataset="wikitext2")
    record.update(ppl=round(result.ppl, 3), windows=result.windows)
    return record


def table(records: list[dict]) -> str:
    lines = ["| model | method | expert calibration | ppl | tokens per expert (least / most used, all layers) | "
             "compress s |", "|---|---|---|---:|---|---:|"]
    for r in records:
        tokens = r.get("tokens_min_max_expert")
        lines.append(f"| {r['model']} | {r['method']} {r['sparsity']} | {r['experts'] or '-'} | {r['ppl']:.3f} | "
                     f"{'-' if not tokens else f'{tokens[0]} / {tokens[1]}'} | {r['compress_seconds']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--sparsity", default="0.5")
    parser.add_argument("--experts", type=int, default=4)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--ppl-seqlen", type=int, default=2048)
    parser.add_argument("--ppl-max-windows", type=int, default=None)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "moe_upcycled")
    args = parser.parse_args()
    from llmprune.model import resolve

    torch.manual_seed(0)
    base = resolve("smollm2-135m")
    jsonl = args.out.with_suffix(".jsonl")
    done = [json.loads(line) for line in jsonl.read_text().splitlines()] if jsonl.is_file() else []
    for model_kind, method, experts in CELLS:
        if any((r["model"], r["method"], r["experts"]) == (model_kind, method or "dense", experts) for r in done):
            continue
        record = run_cell(model_kind, method, experts, args, base)
        print(json.dumps(record), flush=True)
        done.append(record)
        with jsonl.open("a") as f:
            f.write(json.dumps(record) + "\n")
    setup = (f"SmolLM2-135M-Instruct upcycled to {args.experts} experts, top-{args.top_k} (random routers, seed "
             f"{args.seed}); calibration C4 {args.nsamples}x{args.seqlen}; WikiText-2 test, windows of "
             f"{args.ppl_seqlen}" + (f", first {args.ppl_max_windows} windows" if args.ppl_max_windows else ""))
    args.out.with_suffix(".md").write_text(f"# MoE calibration on an upcycled SmolLM2\n\n{setup}; "
                                           f"`python benchmarks/moe_upcycled.py` ({time.strftime('%Y-%m-%d')}, "
                                           f"CPU, float32).\n\n{table(done)}\n")
    print(table(done))


if __name__ == "__main__":
    main()
