"""bitsandbytes NF4 on SmolLM2-135M: the 4-bit baseline users know, next to llmprune's quantizers (issue 4's table).

Every decoder Linear weight is replaced by ``dequantize_4bit(quantize_4bit(W, "nf4"))`` from bitsandbytes' own CPU
functions (transformers' ``BitsAndBytesConfig`` defaults: blocks of 64, fp32 absmax, no double quantization ->
4 + 32/64 = 4.5 bits per weight); embeddings and the tied lm_head stay as they are, as in llmprune's rows. Perplexity
uses the same protocol and windows as ``benchmarks/specs/quant_smollm2.yaml``.

    LLMPRUNE_DATA_DIR=../shared/data python benchmarks/nf4_baseline.py --max-windows 8
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def nf4_round_trip(weight: torch.Tensor, blocksize: int) -> torch.Tensor:
    import bitsandbytes.functional as bnbf

    packed, state = bnbf.quantize_4bit(weight.float().contiguous(), blocksize=blocksize, quant_type="nf4")
    return bnbf.dequantize_4bit(packed, state).to(weight.dtype)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--blocksize", type=int, default=64)
    parser.add_argument("--seqlen", type=int, default=2048)
    parser.add_argument("--max-windows", type=int, default=None)
    parser.add_argument("--out", default=str(HERE / "results" / "nf4_smollm2.json"))
    args = parser.parse_args()

    import bitsandbytes

    from llmprune.evals.perplexity import load_eval_text, perplexity
    from llmprune.model import resolve
    from llmprune.model.layers import decoder_layers, get_weight, linears, set_weight_

    loaded = resolve(args.model)
    count = 0
    with torch.no_grad():
        for layer in decoder_layers(loaded.model)[0]:
            for module in linears(layer).values():
                set_weight_(module, nf4_round_trip(get_weight(module), args.blocksize))
                count += 1
    text = load_eval_text("wikitext2")
    start = time.perf_counter()
    result = perplexity(loaded.model, loaded.tokenizer, text.text, seqlen=args.seqlen, progress=False,
                        dataset=text.name, max_windows=args.max_windows)
    row = {"model": args.model, "quant": f"nf4 (bitsandbytes {bitsandbytes.__version__}, blocks of {args.blocksize})",
           "linears": count, "bits_per_weight": 4 + 32 / args.blocksize, "ppl:wikitext2": result.ppl,
           "windows": result.windows, "tokens": result.tokens, "seqlen": result.seqlen,
           "eval_seconds": round(time.perf_counter() - start, 1)}
    Path(args.out).write_text(json.dumps(row, indent=1) + "\n")
    print(json.dumps(row))


if __name__ == "__main__":
    main()
