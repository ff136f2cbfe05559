"""End-to-end decode throughput of packed models vs the dense model (issue 6, "End to end").

Why: kernel microbenchmarks (``benchmarks/kernels.py``) say little about what a user sees; here whole Llama-shaped
models generate greedily in transformers, and every decoder Linear is a ``PackedLinear`` whose dispatch path (Triton
kernel or reference matmul) is recorded and reported next to the tokens/s.

Models: a real model or llmprune checkpoint, or a named random-weight shape (``SHAPES``, evals/random_models.py).

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

from .random_models import DTYPES, SHAPES, build_random, replace_linears_

FORMATS = ("dense", "sparse24", "int4", "sparse24_int4", "group_sparse_int4", "spqr")
# Modifiers, measured as formats of their own (``int4+merged``, ``sparse24+semi+merged``): ``semi`` has sparse24
# layers use PyTorch's semi-structured 2:4 weight from the GPU table's semi_from tokens (dispatch.use_semi_structured:
# as much memory again as the packed weight); ``merged`` runs q/k/v and gate/up as one matmul each
# (llmprune/merged_projections.py; ``dense+merged`` is the dense model merged alike)
MODIFIERS = {"semi": ("sparse24",), "merged": FORMATS}  # modifier: the formats it applies to
SEMI = "sparse24+semi"
VARIANTS = ("eager", "static+cudagraphs", "static+compile")
STATIC_MODES = {"static+cudagraphs": "graph", "static+compile": "compile"}
COMPILE_BACKEND = "inductor"  # torch.compile backend of static+compile (tests use "eager": no C++ toolchain needed)


def check_inputs(model: str, formats: list[str], batches: list[int], device: str, dtype: str,
                 variants: list[str]) -> None:
    """One-line ``UserInputError`` for every bad flag, before anything is built."""
    from llmprune.model import ALIASES

    if model not in SHAPES and model not in ALIASES and not Path(model).expanduser().exists():
        raise UserInputError(f"unknown model or shape {model!r}; give a shape ({', '.join(SHAPES)}), an alias or a "
                             "path")
    for fmt in formats:
        base, *modifiers = fmt.split("+")
        if base not in FORMATS:
            raise UserInputError(f"unknown --format {fmt!r}; choose from {', '.join(FORMATS)}, each optionally with "
                                 f"{' '.join('+' + m for m in MODIFIERS)} (e.g. int4+merged, {SEMI})")
        for modifier in modifiers:
            if base not in MODIFIERS.get(modifier, ()) or modifiers.count(modifier) > 1:
                raise UserInputError(f"--format {fmt!r}: +{modifier} is not a modifier of {base}; "
                                     + "; ".join(f"+{m} applies to {', '.join(f)}" for m, f in MODIFIERS.items()))
    if not batches or any(b < 1 for b in batches):
        raise UserInputError(f"--batch {batches}: every batch size must be >= 1 (e.g. --batch 1,16)")
    from llmprune.pipeline import check_device

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserInputError(f"--device {device} but CUDA is not available here; use --device cpu (not "
                             f"representative)")
    check_device(device)  # cpu, cuda or cuda:N that this machine has
    if dtype not in DTYPES:
        raise UserInputError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}")
    for variant in variants:
        if variant not in VARIANTS:
            raise UserInputError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    if "static+cudagraphs" in variants and not device.startswith("cuda"):
        raise UserInputError("--cuda-graphs needs --device cuda; add --no-cuda-graphs for CPU runs")
    stored = _stored_format(model)
    for fmt in formats:
        if stored is not None and fmt.split("+")[0] not in (stored, "dense"):
            raise UserInputError(f"--format {fmt}: {model} is an llmprune checkpoint measured as stored ({stored}, "
                                 f"against its own weights unpacked as dense); give --format {stored} (or "
                                 f"{stored}+merged)")


def default_formats(model: str) -> list[str]:
    """``--format`` left out: an llmprune checkpoint is measured as stored; anything else as sparse24_int4."""
    return [_stored_format(model) or "sparse24_int4"]


def _stored_format(model: str) -> str | None:
    """The packed format of an llmprune checkpoint (None for anything else)."""
    manifest = Path(model).expanduser() / "llmprune.json"
    if not manifest.is_file():
        return None
    import json

    return str(json.loads(manifest.read_text()).get("format"))


def greedy(model: nn.Module, prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Exactly ``new_tokens`` greedy tokens after ``prompt`` from ``generate`` (dynamic cache, no EOS stop)."""
    with torch.no_grad():
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False, pad_token_id=0, eos_token_id=None)
    return out[:, prompt.shape[1]:]


def _timed(fn, device: str) -> float:
    """Wall seconds of ``fn()``, CUDA synchronized on both sides."""
    sync = (lambda: torch.cuda.synchronize(device)) if device.startswith("cuda") else (lambda: None)
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
    from .static_decode import StaticDecoder, max_len_for

    decoder = StaticDecoder(model, prompt.shape[0], max_len_for(prompt.shape[1], new_tokens), STATIC_MODES[variant],
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


def _check_length(net, prompt_len: int, new_tokens: int) -> None:
    """Prompt and generated tokens must fit the model's positions (GPT-2's learned ones fail with an IndexError)."""
    from llmprune.model.layers import context_length

    limit = context_length(net)
    if limit is not None and prompt_len + new_tokens > limit:
        raise UserInputError(f"--prompt-len {prompt_len} + --new-tokens {new_tokens}: the model takes at most {limit} "
                             f"positions; shorten them")


def run_bench(model: str, formats: list[str], batches: list[int], *, new_tokens: int = 128, prompt_len: int = 32,
              device: str = "cpu", dtype: str = "float16", variants: list[str] = ("eager",), runs: int = 3,
              seed: int = 0, progress: bool = False) -> dict:
    """Dense baseline + each packed format, each batch and variant: rows with tokens/s, speedup vs dense (same
    batch and variant) and the dispatch paths the PackedLinears took (``progress``: a bar over those points,
    minutes each with torch.compile on 7B shapes)."""
    from tqdm import tqdm

    from llmprune.dispatch import kernel_paths

    check_inputs(model, formats, batches, device, dtype, list(variants))
    if new_tokens < 2 or prompt_len < 1:
        raise UserInputError("--new-tokens must be >= 2 and --prompt-len >= 1")
    if runs < 1:
        raise UserInputError(f"--runs {runs}: must be at least 1 (the median of the timed runs is reported)")
    rows, dense_rate = [], {}
    measured = ["dense"] + [f for f in dict.fromkeys(formats) if f != "dense"]
    bar = tqdm(total=len(measured) * len(variants) * len(batches), desc="bench", unit="point", leave=False,
               disable=not progress)
    for fmt in measured:
        net = _build(model, fmt, device, dtype, seed)
        _check_length(net, prompt_len, new_tokens)
        vocab = net.config.vocab_size
        for variant in variants:
            for batch in batches:
                bar.set_postfix_str(f"{fmt} batch {batch} {variant}")
                gen = torch.Generator().manual_seed(seed + batch)
                prompt = torch.randint(0, vocab, (batch, prompt_len), generator=gen).to(device)
                rate, agree, error = _measure(net, prompt, new_tokens, device, variant, runs)
                paths = dict(Counter(kernel_paths(net).values()))
                if fmt == "dense":
                    dense_rate[(batch, variant)] = rate
                rows.append({"format": fmt, "batch": batch, "variant": variant, "tokens_per_s": rate,
                             "speedup": rate / dense_rate[(batch, variant)], "agree": agree, "paths": paths,
                             "error": error})
                bar.update()
        del net
    bar.close()
    return {"model": model, "device": device, "dtype": dtype, "new_tokens": new_tokens, "prompt_len": prompt_len,
            "representative": device.startswith("cuda"),
            "gpu": torch.cuda.get_device_name(device) if device.startswith("cuda") else None,
            "versions": _versions(), "rows": rows}


def _versions() -> dict[str, str]:
    """The manifest's package versions (``pipeline.versions``: transformers decides how the static KV cache and the
    masks are built) and triton's, which runs the kernels."""
    from importlib.metadata import PackageNotFoundError, version

    from llmprune.pipeline import versions

    try:
        triton = version("triton")
    except PackageNotFoundError:
        triton = "absent"
    return {**versions(), "triton": triton}


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
    """``_build_format`` of the base format, then its ``MODIFIERS`` applied."""
    from llmprune.dispatch import use_semi_structured
    from llmprune.merged_projections import merge_projections

    base, *modifiers = fmt.split("+")
    net = _build_format(model, base, device, dtype, seed)
    if "semi" in modifiers:
        use_semi_structured(net)
    if "merged" in modifiers:
        merge_projections(net)
    return net


def _build_format(model: str, fmt: str, device: str, dtype: str, seed: int) -> nn.Module:
    """A random shape, an llmprune checkpoint (as stored; ``dense``: the same weights unpacked into plain Linears,
    the baseline its speedups are over) or a real model whose decoder Linears get random ``fmt`` patterns of the
    same shapes."""
    if model in SHAPES:
        return build_random(model, fmt, device, dtype, seed)
    if _stored_format(model) is not None:
        import llmprune
        from llmprune.packed_linear import unpack_linears_

        net, _, _ = llmprune.load(model, device=device, dtype=DTYPES[dtype])
        if fmt == "dense":
            unpack_linears_(net, DTYPES[dtype])
        return net.eval()
    from llmprune.model import resolve

    net = resolve(model, dtype=DTYPES[dtype]).model.to(device)
    if fmt != "dense":
        replace_linears_(net, fmt, device, dtype, torch.Generator(device=device).manual_seed(seed))
    return net.eval()


def format_table(result: dict) -> str:
    """Markdown table: format, batch, variant, tokens/s, speedup vs dense, agreement with eager ``generate``'s
    greedy tokens (static variants; fp16 rounding may flip near-ties), dispatch paths."""
    versions = ", ".join(f"{k} {v}" for k, v in result.get("versions", {}).items())
    lines = [f"Model {result['model']}, {result['device']} {result['gpu'] or ''} {result['dtype']}, prompt "
             f"{result['prompt_len']}, {result['new_tokens']} new tokens; {versions}"]
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
