"""End-to-end decode throughput of packed models vs the dense model (issue 6, "End to end").

Why: kernel microbenchmarks (``benchmarks/kernels.py``) say little about what a user sees; here whole Llama-shaped
models generate greedily in transformers, and every decoder Linear is a ``PackedLinear`` whose dispatch path (Triton
kernel or reference matmul) is recorded and reported next to the tokens/s.

Models: a real model or llmprune checkpoint, or a named random-weight shape (``SHAPES``). Random shapes are built on
the meta device and materialized on the target device in the target dtype, one decoder Linear at a time, so a 7B
model never exists as a float32 CPU copy and the packed variants never hold all dense weights at once.

Variants: ``eager`` times transformers' ``generate``: t(n new tokens) minus t(1) (the prefill and first token), so
tokens/s = batch * (n - 1) / decode seconds. ``static+cudagraphs`` replays one captured decode step with a static KV
cache and ``static+compile`` runs it through ``torch.compile`` (``evals/static_decode.py``); both time the n - 1
decode steps after an untimed prefill and report how many greedy tokens equal eager ``generate``'s. Warmup first,
CUDA synchronized, median of ``runs``. CPU runs use the reference matmuls and are labelled not representative.

GPU command (fills issue 6's end-to-end table on one H100)::

    llmprune bench llama-7b --format sparse24_int4,group_sparse_int4,int4,spqr,sparse24 --batch 1,16 \\
        --new-tokens 128 --prompt-len 32 --device cuda --dtype float16 --cuda-graphs --json
    python benchmarks/decode.py llama-7b   # same, and writes benchmarks/results/<date>-<gpu>-decode.md
"""
from __future__ import annotations

import statistics
import time
from collections import Counter
from pathlib import Path

import torch
from torch import nn

from llmprune.errors import UserInputError
from llmprune.packed_linear import PackedLinear, set_module_

SHAPES = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=256, max_position_embeddings=256),
    "llama-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096),
    "llama3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0),
}
FORMATS = ("dense", "sparse24", "int4", "sparse24_int4", "group_sparse_int4", "spqr")
VARIANTS = ("eager", "static+cudagraphs", "static+compile")
STATIC_MODES = {"static+cudagraphs": "graph", "static+compile": "compile"}
COMPILE_BACKEND = "inductor"  # torch.compile backend of static+compile (tests use "eager": no C++ toolchain needed)
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def check_inputs(model: str, formats: list[str], batches: list[int], device: str, dtype: str,
                 variants: list[str]) -> None:
    """One-line ``UserInputError`` for every bad flag, before anything is built."""
    from llmprune.model import ALIASES

    if model not in SHAPES and model not in ALIASES and not Path(model).expanduser().exists():
        raise UserInputError(f"unknown model or shape {model!r}; give a shape ({', '.join(SHAPES)}), an alias or a path")
    for fmt in formats:
        if fmt not in FORMATS:
            raise UserInputError(f"unknown --format {fmt!r}; choose from {', '.join(FORMATS)}")
    if not batches or any(b < 1 for b in batches):
        raise UserInputError(f"--batch {batches}: every batch size must be >= 1 (e.g. --batch 1,16)")
    if device not in ("cpu", "cuda"):
        raise UserInputError(f"--device {device}: choose cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserInputError("--device cuda but CUDA is not available here; use --device cpu (not representative)")
    if dtype not in DTYPES:
        raise UserInputError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}")
    for variant in variants:
        if variant not in VARIANTS:
            raise UserInputError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    if "static+cudagraphs" in variants and device != "cuda":
        raise UserInputError("--cuda-graphs needs --device cuda; add --no-cuda-graphs for CPU runs")


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
    same shape (decode speed does not depend on the values), one at a time."""
    from llmprune.model import decoder_layers, linears
    td = DTYPES[dtype]
    blocks, path = decoder_layers(model)
    for i, block in enumerate(blocks):
        for rel, lin in linears(block).items():
            out_f, in_f = lin.weight.shape
            if fmt == "dense":
                new = nn.Linear(in_f, out_f, bias=False, device=device, dtype=td)
                with torch.no_grad():
                    new.weight.normal_(0.0, 0.02, generator=gen)
            else:
                source = random_qweight(fmt, out_f, in_f, device, gen)
                new = (PackedLinear.from_dense(source.to(td), fmt, dtype=dtype) if isinstance(source, torch.Tensor)
                       else PackedLinear.from_quantized(source, fmt, dtype=dtype))
            set_module_(model, f"{path}.{i}.{rel}", new)


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
    for name, module in list(twin.named_modules()):
        if isinstance(module, PackedLinear):
            weight = module.dequantize()
            dtype = twin.get_input_embeddings().weight.dtype
            lin = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                            device=weight.device, dtype=dtype)
            with torch.no_grad():
                lin.weight.copy_(weight.to(dtype))
                if module.bias is not None:
                    lin.bias.copy_(module.bias)
            set_module_(twin, name, lin)
    return twin


def greedy(model: nn.Module, prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Exactly ``new_tokens`` greedy tokens after ``prompt`` from ``generate`` (dynamic cache, no EOS stop)."""
    with torch.no_grad():
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False, pad_token_id=0, eos_token_id=None)
    return out[:, prompt.shape[1]:]


def _timed(fn, device: str) -> float:
    """Wall seconds of ``fn()``, CUDA synchronized on both sides."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def decode_tokens_per_s(model: nn.Module, prompt: torch.Tensor, new_tokens: int, device: str, variant: str,
                        runs: int = 3, warmup: int = 1) -> tuple[float, float | None]:
    """(decode tokens/s, fraction of greedy tokens equal to eager ``generate``'s; None for eager itself).

    eager: batch * (n-1) / (median t(generate n) - median t(generate 1)), so the prefill cancels out; NaN when
    timing noise swamps the difference (toy sizes). Static variants (``evals/static_decode.py``): batch * (n-1) /
    median time of the n-1 decode steps after an untimed prefill.
    """
    if variant == "eager":
        for _ in range(warmup):
            greedy(model, prompt, min(new_tokens, 4))
        full = statistics.median(_timed(lambda: greedy(model, prompt, new_tokens), device) for _ in range(runs))
        first = statistics.median(_timed(lambda: greedy(model, prompt, 1), device) for _ in range(runs))
        rate = prompt.shape[0] * (new_tokens - 1) / (full - first) if full > first else float("nan")
        return rate, None
    from .static_decode import StaticDecoder

    decoder = StaticDecoder(model, prompt.shape[0], prompt.shape[1] + new_tokens, STATIC_MODES[variant],
                             backend=COMPILE_BACKEND)
    decoder.prepare(prompt)

    def steps():
        for _ in range(new_tokens - 1):
            decoder.step()

    seconds = []
    for _ in range(runs):
        decoder.prefill(prompt)
        seconds.append(_timed(steps, device))
    agree = (decoder.generate(prompt, new_tokens) == greedy(model, prompt, new_tokens)).float().mean().item()
    return prompt.shape[0] * (new_tokens - 1) / statistics.median(seconds), agree


def run_bench(model: str, formats: list[str], batches: list[int], *, new_tokens: int = 128, prompt_len: int = 32,
              device: str = "cpu", dtype: str = "float16", variants: list[str] = ("eager",), runs: int = 3,
              seed: int = 0) -> dict:
    """Dense baseline + each packed format, each batch and variant: rows with tokens/s, speedup vs dense (same
    batch and variant) and the dispatch paths the PackedLinears took."""
    from llmprune.dispatch import kernel_paths

    check_inputs(model, formats, batches, device, dtype, list(variants))
    if new_tokens < 2 or prompt_len < 1:
        raise UserInputError("--new-tokens must be >= 2 and --prompt-len >= 1")
    rows, dense_rate = [], {}
    for fmt in ["dense"] + [f for f in formats if f != "dense"]:
        net = _build(model, fmt, device, dtype, seed)
        vocab = net.config.vocab_size
        for variant in variants:
            for batch in batches:
                gen = torch.Generator().manual_seed(seed + batch)
                prompt = torch.randint(0, vocab, (batch, prompt_len), generator=gen).to(device)
                rate, agree, error = _measure(net, prompt, new_tokens, device, variant, runs)
                paths = dict(Counter(kernel_paths(net).values()))
                if fmt == "dense":
                    dense_rate[(batch, variant)] = rate
                rows.append({"format": fmt, "batch": batch, "variant": variant, "tokens_per_s": rate,
                             "speedup": rate / dense_rate[(batch, variant)], "agree": agree, "paths": paths,
                             "error": error})
        del net
    return {"model": model, "device": device, "dtype": dtype, "new_tokens": new_tokens, "prompt_len": prompt_len,
            "representative": device == "cuda",
            "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
            "rows": rows}


def _measure(net, prompt, new_tokens, device, variant, runs) -> tuple[float, float | None, str | None]:
    """``decode_tokens_per_s``, with a failing static variant (graph capture, compile) recorded as NaN and its
    error instead of ending the run: GPU time is scarce and the other rows still count."""
    try:
        return (*decode_tokens_per_s(net, prompt, new_tokens, device, variant, runs=runs), None)
    except Exception as exc:  # noqa: BLE001 (reported in the table, see docstring)
        if variant == "eager" or isinstance(exc, UserInputError):
            raise
        first = (str(exc).strip().splitlines() or [""])[0]
        return float("nan"), None, f"{type(exc).__name__}: {first[:160]}"


def _build(model: str, fmt: str, device: str, dtype: str, seed: int) -> nn.Module:
    """A random shape, an llmprune checkpoint (as stored, ``fmt`` ignored) or a real model whose decoder Linears
    get random ``fmt`` patterns of the same shapes."""
    if model in SHAPES:
        return build_random(model, fmt, device, dtype, seed)
    if (Path(model).expanduser() / "llmprune.json").is_file():
        import llmprune

        net, _, _ = llmprune.load(model, device=device, dtype=DTYPES[dtype])
        return net.eval()
    from llmprune.model import resolve

    net = resolve(model, dtype=DTYPES[dtype]).model.to(device)
    if fmt != "dense":
        replace_linears_(net, fmt, device, dtype, torch.Generator(device=device).manual_seed(seed))
    return net.eval()


def format_table(result: dict) -> str:
    """Markdown table: format, batch, variant, tokens/s, speedup vs dense, agreement with eager ``generate``'s
    greedy tokens (static variants; fp16 rounding may flip near-ties), dispatch paths."""
    lines = [f"Model {result['model']}, {result['device']} {result['gpu'] or ''} {result['dtype']}, prompt "
             f"{result['prompt_len']}, {result['new_tokens']} new tokens"]
    if not result["representative"]:
        lines.append("CPU run: reference matmuls, NOT representative of GPU kernel speed.")
    lines += ["", "| format | batch | variant | tokens/s | speedup vs dense | tokens = eager | dispatch |",
              "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        paths = ", ".join(f"{k}:{v}" for k, v in sorted(r["paths"].items())) or "-"
        if r.get("error"):
            paths += f" (failed: {r['error']})"
        lines.append(f"| {r['format']} | {r['batch']} | {r['variant']} | {r['tokens_per_s']:.1f} | "
                     f"{r['speedup']:.2f}x | {'-' if r['agree'] is None else format(r['agree'], '.0%')} | {paths} |")
    return "\n".join(lines)
