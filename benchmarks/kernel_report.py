"""The report parts of benchmarks/kernels.py that read its timing records: the goal checks of issue 6, the regime
crossover ratios, and which config the autotuner chose for a timed call."""
from __future__ import annotations

from llmprune.kernels.select import regime_ratios


def tuned_config(fmt: str, regime: str | None, m: int, device) -> str:
    """The config the autotuner chose for the call just timed (which 2-4 token block won, split count, tile), or
    '-' for the dequantize regimes."""
    import importlib

    from llmprune.kernels.select import choose

    kernels = importlib.import_module(f"llmprune.kernels.{fmt}").KERNELS
    taken = regime or choose(fmt, m, device)
    tuned = {"gemv": kernels.gemv_tuned, "gemm": kernels.gemm_tuned}.get(taken)
    best = getattr(tuned, "best_config", None)
    if best is None:
        return "-"
    short = {"BLOCK_B": "B", "BLOCK_M": "M", "BLOCK_N": "N", "BLOCK_K": "K", "SPLIT_K": "split", "STAGES": "stages"}
    return " ".join(f"{short.get(k, k)}{v}" for k, v in best.kwargs.items()) + f" w{best.num_warps}"


GOALS = {"int4": 3.0, "sparse24_int4": 4.0, "group_sparse_int4": 4.0}  # issue 6, batch 1-16 on the MLP shapes


def summary(records: list[dict]) -> list[str]:
    """Goal checks (issue 6) and the measured dispatch crossover to copy into kernels/select.py."""
    out = ["## Summary", ""]
    auto = [r for r in records if r["regime"] is None]
    for fmt in sorted({r["fmt"] for r in auto}):
        mine = [r for r in auto if r["fmt"] == fmt]
        mlp = [r for r in mine if r["m"] <= 16 and max(r["n"], r["k"]) in (11008, 14336)]
        big = [r for r in mine if r["m"] >= 512]
        if mlp:
            worst = min(r["dense"] / r["t"] for r in mlp)
            goal = f" (goal {GOALS[fmt]:.0f}x: {'met' if worst >= GOALS[fmt] else 'NOT met'})" if fmt in GOALS else ""
            out.append(f"- {fmt}: batch 1-16 on MLP shapes: worst {worst:.2f}x over dense{goal}, bandwidth "
                       f"{100 * min(r['bw'] for r in mlp):.0f}-{100 * max(r['bw'] for r in mlp):.0f}% of copy")
        if big:
            worst = min(r["dense"] / r["t"] for r in big)
            out.append(f"- {fmt}: batch >= 512: worst {worst:.2f}x of dense ({'ok' if worst >= 0.9 else 'SLOWER'} "
                       "against the 10% bound)")
    fma = [r for r in records if r["m"] <= 4 and r.get("config", "").startswith(("B1 ", "B2 ", "B4 "))]
    if fma:  # the autotuner's verdict on _configs.pipelining
        piped = sum("stages" in r["config"] for r in fma)
        out.append(f"- 1-4 token FMA decode launches that chose a pipelined loop (STAGES): {piped} of {len(fma)}")
    for title, regime, baseline in (
            ("Decode vs prefill kernel (median over shapes of gemv time / gemm time; < 1: decode wins)", "gemv",
             "gemm"),
            ("Dispatch crossover (median over shapes of gemm time / dense-regime time; > 1: dense wins)", "gemm",
             "dense"),
            ("Chunked vs whole-weight dense (median over shapes of chunked time / dense time; < 1: chunked wins)",
             "chunked", "dense")):
        out += ["", title + ":", ""]
        for fmt in sorted({r["fmt"] for r in records}):
            ratios = regime_ratios(records, fmt, regime, baseline)
            out.append(f"- {fmt}: " + ", ".join(f"batch {m}: {v:.2f}" for m, v in ratios.items()))
    return out
