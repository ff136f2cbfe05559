"""Direct perplexity oracle: a plain loop over windows, log-softmax written out by hand in float64.

Independent of ``llmprune.evals.perplexity``: no cross_entropy, no batching, no shared helpers. It takes token ids (as
the tokenizer returned them for the whole text) and follows the papers' protocol literally.
"""
from __future__ import annotations

import math

import torch


@torch.no_grad()
def direct_nll(model, ids: list[int], seqlen: int, max_windows: int | None = None) -> tuple[float, int, list[float]]:
    """(Σ token NLL, predicted tokens, per-window mean NLL) over non-overlapping windows, tail dropped."""
    windows = len(ids) // seqlen
    if max_windows is not None:
        windows = min(windows, max_windows)
    total, count, window_means = 0.0, 0, []
    for w in range(windows):
        window = torch.tensor(ids[w * seqlen:(w + 1) * seqlen], dtype=torch.long)
        logits = model(window[None]).logits[0].double()  # [seqlen, vocab]
        window_sum = 0.0
        for t in range(seqlen - 1):
            row = logits[t]
            peak = row.max()
            log_norm = peak + torch.log(torch.exp(row - peak).sum())  # log Σ_v exp(z_v)
            window_sum += float(log_norm - row[window[t + 1]])  # -log softmax(z)[next token]
        total += window_sum
        count += seqlen - 1
        window_means.append(window_sum / (seqlen - 1))
    return total, count, window_means


def direct_perplexity(model, ids: list[int], seqlen: int, max_windows: int | None = None) -> float:
    """exp of the mean NLL over every predicted token."""
    total, count, _ = direct_nll(model, ids, seqlen, max_windows)
    return math.exp(total / count)


def reference_code_perplexity(model, ids: list[int], seqlen: int) -> float:
    """The SparseGPT/Wanda code's weighting: Σ_w mean_w · seqlen / (windows · seqlen)."""
    _, _, window_means = direct_nll(model, ids, seqlen)
    nlls = [mean * seqlen for mean in window_means]
    return math.exp(sum(nlls) / (len(window_means) * seqlen))
