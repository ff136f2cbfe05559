"""``llmprune eval``: perplexity (the papers' protocol) and zero-shot tasks (lm-eval) on a model as llmprune
loads it."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from llmprune.errors import UserInputError


def load_for_eval(spec: str, *, device: str, dtype: str):
    """An llmprune checkpoint (packed modules included) or anything ``resolve`` accepts."""
    import torch

    from llmprune.pipeline import DTYPES

    if dtype not in DTYPES:
        raise UserInputError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}")
    if Path(spec, "llmprune.json").is_file():
        from llmprune.checkpoint import load

        model, tokenizer, _ = load(spec, device=device, dtype=DTYPES[dtype])
        return model, tokenizer
    from llmprune.manifest import config_marker

    if Path(spec).is_dir() and config_marker(Path(spec)) is not None:
        return _load_packed_without_manifest(Path(spec), device, DTYPES[dtype])
    from llmprune.model import resolve

    loaded = resolve(spec, dtype=DTYPES[dtype])
    return loaded.model.to(torch.device(device)), loaded.tokenizer


def _load_packed_without_manifest(folder: Path, device: str, dtype):
    """A packed folder whose llmprune.json is gone (e.g. a Hub download of the weights and config only) still loads
    through transformers, with llmprune's quantizer plug-in; only the shard checksums go unchecked."""
    import warnings

    from llmprune.model.load import load_folder

    warnings.warn(f"{folder} has no llmprune.json: loaded through transformers, its shards' checksums unchecked",
                  stacklevel=2)
    model, tokenizer = load_folder(folder, dtype)
    return model.to(device), tokenizer


def _ppl_rows(model, tokenizer, texts: list, *, seqlen, max_seqlen, device, batch_size, progress,
              max_windows=None):
    from llmprune.evals.perplexity import default_seqlen, perplexity, scored_row, smallest_cap
    from llmprune.model.layers import check_seqlen

    window = seqlen or default_seqlen(model, cap=max_seqlen)
    check_seqlen(model, window, "--seqlen")
    rows = []
    for text in texts:
        result = perplexity(model, tokenizer, text.text, seqlen=window, device=device, batch_size=batch_size,
                            progress=progress, dataset=text.name,
                            max_windows=smallest_cap(text.max_windows, max_windows))
        typer.echo(f"{text.name}: ppl {result.ppl:.4f}  [{result.protocol()}]", err=True)
        rows.append(scored_row(result, text))
    return rows


def _record(directory: Path, results: dict, dtype: str) -> None:
    from llmprune.evals.record import record_rows
    from llmprune.model_cards import rows_from_perplexity, rows_from_zeroshot

    rows = rows_from_perplexity(results.get("perplexity", []))
    if "zeroshot" in results:
        rows += rows_from_zeroshot(results["zeroshot"])
    written = record_rows(directory, rows, dtype, fix="make it writable or pass --no-record")
    if written:  # a read-only folder only warned: the numbers were printed, the evaluation still succeeded
        typer.echo(f"recorded the results in {' and '.join(str(p) for p in written)}", err=True)


def eval_command(
    model: str = typer.Argument(..., help="An llmprune output folder, HF folder, .gguf, Hub id or alias."),
    ppl: Optional[str] = typer.Option(None, help="Perplexity sets, comma-separated: wikitext2, ptb, c4, or a file."),
    tasks: Optional[str] = typer.Option(None, help="Zero-shot lm-eval tasks, e.g. arc_easy,hellaswag,piqa,boolq."),
    seqlen: Optional[int] = typer.Option(None, help="Perplexity window (default: the model's max positions, capped)."),
    max_seqlen: int = typer.Option(2048, help="Cap on the default perplexity window."),
    ppl_max_windows: Optional[int] = typer.Option(None, help="Score only the first N perplexity windows (a quick "
                                                  "check; the papers' protocol scores them all)."),
    batch_size: int = typer.Option(1, help="Windows (or lm-eval requests) per forward pass."),
    limit: Optional[float] = typer.Option(None, help="lm-eval: examples per task (or a fraction)."),
    num_fewshot: Optional[int] = typer.Option(None, help="lm-eval: few-shot examples."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    dtype: str = typer.Option("float32", help="float32, float16 or bfloat16."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
    record: bool = typer.Option(True, "--record/--no-record", help="For an llmprune output folder: add the results "
                                "to its llmprune.json and model card (what `llmprune push` publishes)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Evaluate perplexity and/or zero-shot accuracy."""
    if not ppl and not tasks:
        raise UserInputError("nothing to evaluate: give --ppl wikitext2 and/or --tasks arc_easy,...")
    if seqlen is not None and seqlen < 2:
        raise UserInputError(f"--seqlen {seqlen}: must be at least 2")
    if batch_size < 1:
        raise UserInputError(f"--batch-size {batch_size}: must be at least 1")
    if ppl_max_windows is not None and ppl_max_windows < 1:
        raise UserInputError(f"--ppl-max-windows {ppl_max_windows}: must be at least 1")
    if max_seqlen < 2:
        raise UserInputError(f"--max-seqlen {max_seqlen}: must be at least 2")
    if num_fewshot is not None and num_fewshot < 0:
        raise UserInputError(f"--num-fewshot {num_fewshot}: must be 0 or more")
    if limit is not None and not limit > 0:
        raise UserInputError(f"--limit {limit:g}: give a positive number of examples per task (or a fraction < 1)")
    if limit is not None and limit >= 1 and not float(limit).is_integer():
        raise UserInputError(f"--limit {limit:g}: from 1 up it counts examples per task, a whole number (lm-eval "
                             f"would take {int(limit)}); below 1 it is a fraction")
    if ppl is not None and not [n for n in ppl.split(",") if n.strip()]:
        raise UserInputError(f"--ppl {ppl!r}: name a set, e.g. --ppl wikitext2")
    from llmprune.pipeline import check_device

    check_device(device)
    texts = []
    if ppl:  # unknown names and missing data fail before the model loads
        from llmprune.evals.perplexity import load_eval_text

        texts = [load_eval_text(n.strip()) for n in ppl.split(",") if n.strip()]
    task_names = None
    if tasks:
        from .eval_zeroshot import check_tasks

        task_names = check_tasks(tasks)  # unknown names / missing data fail before the model loads
    if texts and seqlen is not None:  # a window the model cannot take fails before its weights load
        from llmprune.model.layers import check_seqlen
        from llmprune.model.load import read_config

        check_seqlen(read_config(model), seqlen, "--seqlen")  # None (read only when loading) says nothing
    from llmprune.pipeline import library_progress

    # the libraries' bars off for the whole evaluation: transformers' "Loading weights", and a compressed-tensors
    # checkpoint's "Decompressing model", which runs at the first forward
    with library_progress(not quiet):
        loaded_model, tokenizer = load_for_eval(model, device=device, dtype=dtype)
        results: dict = {"model": model}
        if texts:
            results["perplexity"] = _ppl_rows(loaded_model, tokenizer, texts, seqlen=seqlen, max_seqlen=max_seqlen,
                                              device=device, batch_size=batch_size, progress=not quiet,
                                              max_windows=ppl_max_windows)
        if task_names:
            from .eval_zeroshot import run_zeroshot

            zs = run_zeroshot(loaded_model, tokenizer, task_names, batch_size=batch_size, limit=limit,
                              num_fewshot=num_fewshot, device=device, progress=not quiet)
            results["zeroshot"] = zs.to_dict()
    if record and Path(model, "llmprune.json").is_file():
        _record(Path(model), results, dtype)
    if as_json:
        typer.echo(json.dumps(results, indent=2))
        return
    for row in results.get("perplexity", []):
        typer.echo(f"| {row['dataset']} | ppl {row['ppl']:.4f} | seqlen {row['seqlen']} | windows {row['windows']} "
                   f"| tokens {row['tokens']} |")
    if "zeroshot" in results:
        typer.echo(zs.table())
