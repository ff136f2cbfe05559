"""``llmprune bench``: end-to-end decode tokens/s of packed models vs dense (logic in ``evals/bench.py``)."""
from __future__ import annotations

import json
from typing import Optional

import typer

from llmprune.errors import UserInputError


def _ints(text: str, flag: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UserInputError(f"{flag} {text!r}: give comma-separated integers such as 1,16") from None


def bench_command(
    model: str = typer.Argument("tiny", help="Shape (tiny, llama-7b, llama3-8b), alias, HF folder or llmprune "
                                             "checkpoint."),
    format: Optional[str] = typer.Option(None, "--format", help="Packed format(s), comma-separated (default: an "
                               "llmprune checkpoint's own, else sparse24_int4): sparse24_int4, "
                               "group_sparse_int4, int4, spqr, sparse24, dense (always measured); +merged: q/k/v and "
                               "gate/up as one matmul each (int4+merged, dense+merged); sparse24+semi: on PyTorch's "
                               "semi-structured weight from the GPU table's batch."),
    batch: str = typer.Option("1,16", help="Batch sizes, comma-separated."),
    new_tokens: int = typer.Option(128, help="Greedy decode steps per run."),
    prompt_len: int = typer.Option(32, help="Random prompt length (prefill)."),
    device: str = typer.Option("cuda", help="cuda (or cuda:N), or cpu (reference matmuls; not representative)."),
    dtype: str = typer.Option("float16", help="float16 or bfloat16 (float32 for CPU checks)."),
    cuda_graphs: Optional[bool] = typer.Option(None, "--cuda-graphs/--no-cuda-graphs",
                                               help="Also replay a captured decode step (static KV cache + "
                                                    "CUDA graph, no compile); default on for cuda."),
    compile: bool = typer.Option(False, "--compile/--no-compile", help="Also run the static-cache decode step "
                                 "through torch.compile (inductor; slow to compile on 7B shapes)."),
    runs: int = typer.Option(3, help="Timed runs per point (median)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of the table."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Decode throughput of packed models vs the dense model, with the dispatch path each layer took."""
    from llmprune.evals.bench import default_formats, format_table, run_bench

    graphs = device.startswith("cuda") if cuda_graphs is None else cuda_graphs
    variants = ["eager"] + (["static+compile"] if compile else []) + (["static+cudagraphs"] if graphs else [])
    formats = default_formats(model) if format is None else [f.strip() for f in format.split(",") if f.strip()]
    from llmprune.pipeline import library_progress

    with library_progress(not quiet):  # --quiet: transformers' "Loading weights" bars too
        result = run_bench(model, formats, _ints(batch, "--batch"), new_tokens=new_tokens, prompt_len=prompt_len,
                           device=device, dtype=dtype, variants=variants, runs=runs, progress=not quiet)
    typer.echo(json.dumps(result, indent=2) if as_json else format_table(result))
