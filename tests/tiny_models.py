"""Tiny random-weight causal LMs built from transformers configs (no download), and a tiny byte-level tokenizer.

Shared by every part's tests: ``tiny_model(arch)`` for the architectures in ``ARCHS``; ``tiny_tokenizer()`` for
end-to-end CLI runs; ``save_tiny(dir, arch)`` writes a loadable HF folder (safetensors, config, tokenizer).

Sizes: hidden 64, intermediate 128 (multiples of 16, so 2:4, 4:8 and group-16 patterns fit every Linear's input
dimension), 4 heads of 16 (2 key/value heads where the architecture has GQA), 2 layers, vocabulary 320 (the byte-level
tokenizer's 256 bytes + merges + specials fit in it), float32, eval mode. Gemma2/3 and Mistral get a sliding window of
4 tokens so that sliding and global layers really see different masks in sequences longer than 4.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

VOCAB = 320
HIDDEN = 64
INTERMEDIATE = 128
HEADS = 4
KV_HEADS = 2
LAYERS = 2
MAX_POSITIONS = 128
SLIDING_WINDOW = 4

ARCHS = ["llama", "mistral", "qwen2", "gemma2", "gemma3", "opt", "gpt2", "phi3"]
MOE_ARCHS = ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v3"]  # 4 experts, 2 per token
EXPERTS = 4

_SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Pruning removes weights from a neural network while keeping its accuracy.",
    "Sparse matrices store only their non-zero entries.",
    "Language models predict the next token from the previous ones.",
    "A calibration set of a few sequences guides the layer-wise reconstruction.",
    "Perplexity is the exponential of the mean negative log-likelihood per token.",
]


def _common() -> dict:
    return dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=LAYERS,
                num_attention_heads=HEADS, max_position_embeddings=MAX_POSITIONS, bos_token_id=0, eos_token_id=1,
                pad_token_id=1)


def _config(arch: str):
    import transformers as tf

    gqa = dict(num_key_value_heads=KV_HEADS)
    if arch == "llama":
        return tf.LlamaConfig(**_common(), **gqa), tf.LlamaForCausalLM
    if arch == "mistral":
        return tf.MistralConfig(**_common(), **gqa, sliding_window=SLIDING_WINDOW), tf.MistralForCausalLM
    if arch == "qwen2":
        return tf.Qwen2Config(**_common(), **gqa), tf.Qwen2ForCausalLM
    if arch == "gemma2":
        config = tf.Gemma2Config(**_common(), **gqa, head_dim=HIDDEN // HEADS, sliding_window=SLIDING_WINDOW,
                                 layer_types=["sliding_attention", "full_attention"])
        return config, tf.Gemma2ForCausalLM
    if arch == "gemma3":
        config = tf.Gemma3TextConfig(**_common(), **gqa, head_dim=HIDDEN // HEADS, sliding_window=SLIDING_WINDOW,
                                     layer_types=["sliding_attention", "full_attention"])
        return config, tf.Gemma3ForCausalLM
    if arch == "opt":
        config = tf.OPTConfig(vocab_size=VOCAB, hidden_size=HIDDEN, ffn_dim=INTERMEDIATE, num_hidden_layers=LAYERS,
                              num_attention_heads=HEADS, max_position_embeddings=MAX_POSITIONS,
                              word_embed_proj_dim=HIDDEN, bos_token_id=0, eos_token_id=1, pad_token_id=1)
        return config, tf.OPTForCausalLM
    if arch == "gpt2":
        config = tf.GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_inner=INTERMEDIATE, n_layer=LAYERS, n_head=HEADS,
                               n_positions=MAX_POSITIONS, bos_token_id=0, eos_token_id=1)
        return config, tf.GPT2LMHeadModel
    if arch == "phi3":
        return tf.Phi3Config(**_common(), **gqa), tf.Phi3ForCausalLM
    moe = dict(num_experts_per_tok=2, moe_intermediate_size=INTERMEDIATE // 2)
    if arch == "mixtral":
        return tf.MixtralConfig(**_common(), **gqa, num_local_experts=EXPERTS, num_experts_per_tok=2), \
            tf.MixtralForCausalLM
    if arch == "qwen2_moe":  # with a shared expert and its gate
        return tf.Qwen2MoeConfig(**_common(), **gqa, **moe, num_experts=EXPERTS,
                                 shared_expert_intermediate_size=INTERMEDIATE), tf.Qwen2MoeForCausalLM
    if arch == "qwen3_moe":
        return tf.Qwen3MoeConfig(**_common(), **gqa, **moe, num_experts=EXPERTS), tf.Qwen3MoeForCausalLM
    if arch == "olmoe":
        return tf.OlmoeConfig(**_common(), **gqa, num_experts=EXPERTS, num_experts_per_tok=2), tf.OlmoeForCausalLM
    if arch == "deepseek_v3":  # layer 0 dense, layer 1 MoE; multi-head latent attention
        config = tf.DeepseekV3Config(**_common(), **gqa, **moe, n_routed_experts=EXPERTS, first_k_dense_replace=1,
                                     n_group=1, topk_group=1, q_lora_rank=None, kv_lora_rank=16, qk_rope_head_dim=8,
                                     qk_nope_head_dim=8, v_head_dim=16)
        return config, tf.DeepseekV3ForCausalLM
    raise ValueError(f"unknown tiny architecture {arch!r}; choose one of {ARCHS + MOE_ARCHS}")


def tiny_calibration(n: int = 4, seqlen: int = 32, seed: int = 0):
    """Random token windows of the tiny vocabulary as a ``CalibrationSet``."""
    from llmprune.data.calibration import CalibrationSet, windows_sha256

    ids = torch.randint(0, VOCAB, (n, seqlen), generator=torch.Generator().manual_seed(seed))
    return CalibrationSet(ids, windows_sha256(ids))


def tiny_model(arch: str, seed: int = 0):
    """A random-weight ``arch`` model in float32 eval mode, and its config. Same seed -> same weights."""
    config, cls = _config(arch)
    config.use_cache = False
    torch.manual_seed(seed)
    model = cls(config).to(torch.float32).eval()
    with torch.no_grad():  # biases start at zero in most inits; make them non-trivial so Conv1D/bias paths are tested
        generator = torch.Generator().manual_seed(seed + 1)
        for module in model.modules():
            bias = getattr(module, "bias", None)
            if isinstance(bias, torch.nn.Parameter) and module.__class__.__name__ in {"Linear", "Conv1D"}:
                bias.copy_(0.02 * torch.randn(bias.shape, generator=generator))
    return model, config


@lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(_SENTENCES, trainer=trainer)
    return tokenizer.to_str()


def tiny_tokenizer():
    """A byte-level BPE tokenizer (any text encodes; ids < VOCAB) trained in memory on a few sentences.

    ``<s>`` (id 0) is BOS and ``</s>`` (id 1) EOS and padding, as in the tiny configs.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_str(_tokenizer_json())
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="</s>",
                                   model_max_length=MAX_POSITIONS)


def save_tiny(directory, arch: str, seed: int = 0) -> Path:
    """Write a loadable HF folder (model.safetensors, config.json, tokenizer files) for ``arch``; returns the path."""
    directory = Path(directory)
    model, _ = tiny_model(arch, seed)
    model.save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return directory
