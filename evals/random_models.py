"""Random-weight Llama-shaped models for the decode benchmark (``llmprune bench``, evals/bench.py): dense, or with
every decoder Linear a ``PackedLinear`` holding a random pattern of the format (decode speed does not depend on the
values), plus the dequantized dense twin that checks the packed model's exactness.

Random shapes are built on the meta device and materialized on the target device in the target dtype, one decoder
Linear at a time, so a 7B model never exists as a float32 CPU copy and the packed variants never hold all dense
weights at once.
"""
from __future__ import annotations

import torch
from torch import nn

from llmprune.errors import UserInputError
from llmprune.packed_linear import PackedLinear, set_module_, unpack_linears_

SHAPES = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=256, max_position_embeddings=256),
    "llama-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096),
    "llama3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0),
}

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def meta_model(shape: str):
    """The Llama model of ``shape`` on the meta device (no storage): for parameter counts and as a skeleton."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if shape not in SHAPES:
        raise UserInputError(f"unknown shape {shape!r}; choose from {', '.join(SHAPES)}")
    config = LlamaConfig(**SHAPES[shape], bos_token_id=None, eos_token_id=None, pad_token_id=None)
    with torch.device("meta"):
        return LlamaForCausalLM(config)


def random_qweight(fmt: str, out_f: int, in_f: int, device, gen: torch.Generator):
    """A random QuantizedWeight (or masked dense weight for ``sparse24``) with the pattern ``fmt`` stores:
    2:4 masks, half of each row's groups kept, SpQR bilevel statistics (SpQR §4.2) with 1% CSR outliers."""
    from llmprune.types import QuantizedWeight

    rand, ints = _draws(device, gen)
    if fmt == "spqr":
        return _random_spqr(out_f, in_f, device, gen)
    group = next((g for g in (128, 64, 32, 16) if in_f % g == 0 and in_f // g >= 2), in_f)
    groups = in_f // group
    if fmt == "sparse24":
        return torch.randn(out_f, in_f, generator=gen, device=device) * 0.02 * _mask24(out_f, in_f, rand)
    scales = rand(out_f, groups) * 0.004 + 0.001
    if fmt == "sparse24_int4":
        zeros = torch.full((out_f, groups), 8.0, device=device)
        mask = _mask24(out_f, in_f, rand)
    else:
        zeros = ints(16, out_f, groups).float()
        mask = None
        if fmt == "group_sparse_int4":
            kept = rand(out_f, groups).argsort(-1)[:, : max(1, groups // 2)]
            live = torch.zeros(out_f, groups, dtype=torch.bool, device=device).scatter(-1, kept, True)
            mask = live.repeat_interleave(group, dim=1)
    codes = ints(16, out_f, in_f).to(torch.uint8)
    if mask is not None:
        zero_codes = zeros.repeat_interleave(group, dim=1).to(torch.uint8)
        codes = torch.where(mask, codes, zero_codes)
    return QuantizedWeight(codes, scales, zeros, 4, group, fmt == "sparse24_int4", mask)


def _mask24(out_f: int, in_f: int, rand) -> torch.Tensor:
    """Random 2:4 keep-mask: the 2 largest of 4 uniform draws in every group of 4 inputs."""
    idx = rand(out_f, in_f // 4, 4).topk(2, dim=-1).indices
    return torch.zeros(out_f, in_f // 4, 4, dtype=torch.bool, device=idx.device).scatter(-1, idx, True).reshape(
        out_f, in_f)


def _draws(device, gen):
    """``rand(*shape)`` and ``ints(high, *shape)`` drawing from ``gen`` on ``device``."""
    return (lambda *s: torch.rand(*s, generator=gen, device=device),
            lambda hi, *s: torch.randint(0, hi, s, generator=gen, device=device))


def _random_spqr(out_f: int, in_f: int, device, gen, group: int = 16, stat_group: int = 16, bits: int = 3):
    from llmprune.types import QuantizedWeight

    groups, blocks, smax = in_f // group, out_f // stat_group, (1 << 3) - 1
    rows = torch.arange(out_f, device=device) // stat_group
    rand, ints = _draws(device, gen)
    ext = {"scale_codes": ints(smax + 1, out_f, groups).to(torch.uint8),
           "zero_codes": ints(smax + 1, out_f, groups).to(torch.uint8),
           "scale_scale": (rand(blocks, groups) * 0.001 + 0.0005).half().float(),
           "scale_zero": torch.full((blocks, groups), -1.0, device=device),
           "zero_scale": (rand(blocks, groups) + 0.5).half().float(),
           "zero_zero": ints(smax + 1, blocks, groups).float(), "stat_bits": 3, "stat_group": stat_group}
    scales = (ext["scale_codes"].float() - ext["scale_zero"][rows]) * ext["scale_scale"][rows]
    zeros = (ext["zero_codes"].float() - ext["zero_zero"][rows]) * ext["zero_scale"][rows]
    codes = ints(1 << bits, out_f, in_f).to(torch.uint8)
    r, c = (rand(out_f, in_f) < 0.01).nonzero(as_tuple=True)
    row_ptr = torch.cat([torch.zeros(1, dtype=torch.int64, device=device),
                         torch.bincount(r, minlength=out_f).cumsum(0)])
    values = (torch.randn(len(r), generator=gen, device=device) * 0.05).half()
    return QuantizedWeight(codes, scales, zeros, bits, group, False, None, (row_ptr, c.to(torch.int32), values), ext)


def build_random(shape: str, fmt: str, device: str = "cpu", dtype: str = "float16", seed: int = 0) -> nn.Module:
    """Random-weight ``shape`` with every decoder Linear dense (``fmt="dense"``) or a ``PackedLinear``; built from
    the meta skeleton one tensor / one Linear at a time directly on ``device`` in ``dtype``."""
    model, td = meta_model(shape), DTYPES[dtype]
    gen = torch.Generator(device=device).manual_seed(seed)
    replace_linears_(model, fmt, device, dtype, gen)
    _materialize_rest_(model, device, td, gen)
    return model.eval()


def replace_linears_(model: nn.Module, fmt: str, device, dtype: str, gen: torch.Generator) -> None:
    """Every decoder Linear -> a random dense Linear (``fmt="dense"``) or a random-pattern ``PackedLinear`` of the
    same shape and bias (decode speed does not depend on the values), one at a time. GPT-2's ``Conv1D`` stores its
    weight ``[in, out]``: shapes are read through ``get_weight``."""
    from llmprune.model import decoder_layers, linears
    from llmprune.model.layers import get_weight

    td = DTYPES[dtype]
    blocks, path = decoder_layers(model)
    for i, block in enumerate(blocks):
        for rel, lin in linears(block).items():
            out_f, in_f = get_weight(lin).shape
            bias = None if lin.bias is None else torch.randn(out_f, generator=gen, device=device).mul_(0.02).to(td)
            if fmt == "dense":
                new = nn.Linear(in_f, out_f, bias=bias is not None, device=device, dtype=td)
                with torch.no_grad():
                    new.weight.normal_(0.0, 0.02, generator=gen)
                    if bias is not None:
                        new.bias.copy_(bias)
            else:
                new = random_packed_linear(fmt, out_f, in_f, device, gen, dtype, bias=bias)
            set_module_(model, f"{path}.{i}.{rel}", new)


def random_packed_linear(fmt: str, out_f: int, in_f: int, device, gen: torch.Generator, dtype: str = "float16",
                         bias: torch.Tensor | None = None) -> PackedLinear:
    """A ``PackedLinear`` of ``random_qweight``'s pattern for ``fmt``, values and scales stored in ``dtype``."""
    source = random_qweight(fmt, out_f, in_f, device, gen)
    if isinstance(source, torch.Tensor):  # sparse24 stores a masked dense weight
        return PackedLinear.from_dense(source.to(DTYPES[dtype]), fmt, dtype=dtype, bias=bias)
    return PackedLinear.from_quantized(source, fmt, dtype=dtype, bias=bias)


def _materialize_rest_(model: nn.Module, device, td, gen) -> None:
    """Embeddings, norms, lm_head: random on ``device``; the rotary tables recomputed (non-persistent buffers)."""
    for mname, module in list(model.named_modules()):
        if type(module).__name__.endswith("RotaryEmbedding"):
            set_module_(model, mname, type(module)(model.config).to(device))
            continue
        for pname, param in list(module.named_parameters(recurse=False)):
            if param.is_meta:
                data = (torch.ones(param.shape, device=device, dtype=td) if "norm" in mname
                        else torch.randn(param.shape, generator=gen, device=device).mul_(0.02).to(td))
                setattr(module, pname, nn.Parameter(data, requires_grad=False))


def dense_twin(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose PackedLinears are ``nn.Linear`` with the dequantized weight: the exactness oracle."""
    twin = __import__("copy").deepcopy(model)
    return unpack_linears_(twin, twin.get_input_embeddings().weight.dtype)
