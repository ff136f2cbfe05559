"""Hand-built layers with correlated, outlier-feature inputs (the regime where activation-aware pruning matters)."""
from __future__ import annotations

import torch

from llmprune.types import Stats


def correlated_inputs(tokens: int, features: int, *, seed: int = 0, outliers: int = 4) -> torch.Tensor:
    """Inputs with a low-rank shared component and a few large-magnitude features, like LLM activations."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(tokens, features // 4, generator=g) @ torch.randn(features // 4, features, generator=g)
    x = base + 0.3 * torch.randn(tokens, features, generator=g)
    scale = torch.ones(features)
    scale[torch.randperm(features, generator=g)[:outliers]] = 20.0
    return x * scale


def stats_of(X: torch.Tensor) -> Stats:
    """Statistics computed directly from the input matrix [tokens, features] (the definitions in types.Stats)."""
    X = X.float()
    T = X.shape[0]
    return Stats(input_sq_norms=(X**2).sum(0) / T, hessian=2 * X.T @ X / T, input_mean=X.mean(0),
                 input_var=X.var(0, unbiased=False), tokens=T)


def recon_error(W: torch.Tensor, W_hat: torch.Tensor, X: torch.Tensor) -> float:
    """‖W Xᵀ − Ŵ Xᵀ‖_F."""
    return float(((W.double() - W_hat.double()) @ X.double().T).norm())
