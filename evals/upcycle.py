"""A real-weight MoE without a download: a Llama-architecture model sparse-upcycled into a Mixtral.

Sparse upcycling (Komatsuzaki et al., 2022) initialises every expert of a MoE block with the dense model's MLP. With
identical experts and Mixtral's top-k weights renormalised to sum to one, the upcycled model computes what the dense
one did, whatever its (random) router chooses (up to float rounding; bit for bit with top-1, whose weight is exactly
1). That makes it an end-to-end oracle for the MoE path: with ``--calib-experts all`` every expert sees the dense
MLP's inputs, so pruning the upcycled top-1 model must give the pruned dense MLP in every expert (tests/test_moe.py);
with routed calibration each expert is pruned from its own tokens instead, and the perplexity shows what that costs
(``benchmarks/moe_upcycled.py``).
"""
from __future__ import annotations

import torch
from torch import nn


def upcycle_llama(model: nn.Module, *, experts: int = 4, top_k: int = 2, seed: int = 0) -> nn.Module:
    """A ``MixtralForCausalLM`` holding ``model``'s weights (a Llama-architecture causal LM without MLP biases),
    each MLP copied into ``experts`` experts, routers drawn from N(0, 0.02²) with ``seed``."""
    from transformers import MixtralConfig, MixtralForCausalLM

    src = model.config
    if getattr(src, "model_type", None) != "llama" or getattr(src, "mlp_bias", False):
        raise ValueError("upcycle_llama takes a Llama-architecture model without MLP biases")
    keep = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "rope_parameters", "tie_word_embeddings",
            "bos_token_id", "eos_token_id", "pad_token_id", "hidden_act", "head_dim")
    config = MixtralConfig(**{k: getattr(src, k) for k in keep if getattr(src, k, None) is not None},
                           num_local_experts=experts, num_experts_per_tok=top_k, router_jitter_noise=0.0)
    dtype = model.get_input_embeddings().weight.dtype
    moe = MixtralForCausalLM(config).to(dtype)
    generator = torch.Generator().manual_seed(seed)
    state = {key: value for key, value in model.state_dict().items() if ".mlp." not in key}
    for i, layer in enumerate(model.model.layers):
        mlp, prefix = layer.mlp, f"model.layers.{i}.mlp"
        gate_up = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).detach()
        state[f"{prefix}.experts.gate_up_proj"] = gate_up.expand(experts, *gate_up.shape).clone()
        down = mlp.down_proj.weight.detach()
        state[f"{prefix}.experts.down_proj"] = down.expand(experts, *down.shape).clone()
        router = 0.02 * torch.randn(experts, config.hidden_size, generator=generator)
        state[f"{prefix}.gate.weight"] = router.to(dtype)
    missing, unexpected = moe.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"upcycle_llama: missing {sorted(set(missing) - tied)[:3]}, unexpected {unexpected[:3]}")
    return moe.eval()
