"""Why DSnoT's gain does not always grow with sparsity on SmolLM2-135M: what the refinement does to each layer's
*true* output error, not only to the expected error DSnoT minimises.

DSnoT (arXiv:2310.08915) drives the per-row expected error e_i = Σ_j (W_ij − Ŵ_ij)·E[x_j] towards zero. The
output error a layer passes on is the mean squared error E[((W − Ŵ)x)²] = dᵀ·E[xxᵀ]·d per row (d = W_i − Ŵ_i),
which is the squared expected error e_i² *plus* the variance term dᵀ·Cov(x)·d. A swap that shrinks e_i can grow the
variance term more than it shrinks e_i²; whether the refinement helps depends on how large the mean part is against
the variance part in that model's activations. This script measures both parts before and after DSnoT for Wanda
masks on a few decoder layers of the dense model (inputs captured from the dense model, C4 calibration windows), per
Linear kind.

    LLMPRUNE_DATA_DIR=../shared/data python benchmarks/dsnot_diagnosis.py --out benchmarks/results/dsnot_diagnosis.md
"""
from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import torch

KINDS = {"q_proj": "attention q/k/v input", "o_proj": "attention o_proj input", "up_proj": "MLP gate/up input",
         "down_proj": "MLP down_proj input"}
SIBLINGS = {"q_proj": ("q_proj", "k_proj", "v_proj"), "o_proj": ("o_proj",), "up_proj": ("gate_proj", "up_proj"),
            "down_proj": ("down_proj",)}


def block_part(model, index: int, kind: str):
    """The attention or MLP submodule of decoder layer ``index`` that holds the Linears of ``kind``."""
    layer = model.model.layers[index]
    return layer.self_attn if kind in ("q_proj", "o_proj") else layer.mlp


def capture_inputs(model, ids: torch.Tensor, layers: list[int]) -> dict[tuple[int, str], torch.Tensor]:
    """Inputs [tokens, in] of each (layer, kind) Linear on the dense model."""
    seen: dict[tuple[int, str], list[torch.Tensor]] = defaultdict(list)
    hooks = []
    for index in layers:
        for kind in KINDS:
            module = getattr(block_part(model, index, kind), kind)
            hooks.append(module.register_forward_hook(
                lambda _m, args, _out, key=(index, kind): seen[key].append(args[0].detach().flatten(0, -2).float())))
    with torch.no_grad():
        for row in ids.split(4):
            model(row)
    for hook in hooks:
        hook.remove()
    return {key: torch.cat(parts) for key, parts in seen.items()}


def error_parts(W: torch.Tensor, W_hat: torch.Tensor, X: torch.Tensor) -> tuple[float, float]:
    """(mean squared output error per row and token, its squared-mean part), float64."""
    d = (W - W_hat).double()
    out = X.double() @ d.T  # [tokens, rows]
    total = float(out.pow(2).mean())
    mean_part = float(out.mean(0).pow(2).mean())
    return total, mean_part


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--layers", default="0,8,16,24")
    parser.add_argument("--sparsity", default="0.5,0.6,0.7,2:4")
    parser.add_argument("--nsamples", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    import llmprune
    from llmprune.prune import METHODS
    from llmprune.refine.dsnot import dsnot
    from llmprune.engine.stats import InputStats
    from llmprune.refine import REFINERS

    torch.manual_seed(0)
    loaded = llmprune.resolve(args.model)
    calib = llmprune.calibration_windows(loaded.tokenizer, llmprune.Calibration("c4", args.nsamples, args.seqlen, 0))
    layers = [int(x) for x in args.layers.split(",")]
    inputs = capture_inputs(loaded.model, calib.ids, layers)
    wanda = METHODS.get("wanda").fn
    needs = REFINERS.get("dsnot").needs
    stats = {}
    for key, X in inputs.items():  # the engine's own running statistics, once per input space
        acc = InputStats(X.shape[1], needs, X.device)
        acc.update(X)
        stats[key] = acc.to_stats()
    rows = []
    for level in args.sparsity.split(","):
        sparsity = llmprune.parse_sparsity(level)
        for kind, label in KINDS.items():
            sums = defaultdict(float)
            for index in layers:
                X, layer_stats = inputs[(index, kind)], stats[(index, kind)]
                part = block_part(loaded.model, index, kind)
                for name in SIBLINGS[kind]:
                    W = getattr(part, name).weight.detach().float()
                    base = wanda(W, layer_stats, sparsity)
                    refined = dsnot(W, base, layer_stats, sparsity, calib_seqlen=args.seqlen)
                    for tag, pruned in (("before", base), ("after", refined)):
                        total, mean_part = error_parts(W, pruned.weight, X)
                        sums[f"{tag}_total"] += total
                        sums[f"{tag}_mean"] += mean_part
                    sums["swaps"] += refined.info["dsnot_swaps"] / W.shape[0]
                    sums["linears"] += 1
            rows.append((level, label, sums))
            print(level, label, {k: round(v, 6) for k, v in sums.items()}, flush=True)

    lines = ["| sparsity | Linear input | mean part of the error before | total error change | mean-part change | "
             "swaps per row |", "|---|---|---:|---:|---:|---:|"]
    for level, label, s in rows:
        lines.append(f"| {level} | {label} | {s['before_mean'] / s['before_total']:.1%} | "
                     f"{s['after_total'] / s['before_total'] - 1:+.2%} | "
                     f"{s['after_mean'] / max(s['before_mean'], 1e-30) - 1:+.1%} | {s['swaps'] / s['linears']:.1f} |")
    head = (f"## DSnoT on Wanda masks: output error before/after, {args.model}, layers {args.layers} (dense inputs, "
            f"{args.nsamples} x {args.seqlen} C4 tokens)\n\n"
            "Error = mean over rows and tokens of ((W − Ŵ)x)²; its mean part = mean over rows of "
            "(E[(W − Ŵ)x])², "
            "the quantity DSnoT drives to zero. Summed over the Linears of each kind in the listed layers.\n")
    text = head + "\n" + "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
