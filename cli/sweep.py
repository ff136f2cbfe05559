"""``llmprune sweep``: perplexity at many sparsity levels, the essential sparsity, JSON + CSV + PNG."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from llmprune.errors import UserInputError


def sweep_command(
    model: str = typer.Argument(..., help="HF folder, .gguf file, Hub id (online), or alias 'smollm2-135m'."),
    method: List[str] = typer.Option(["magnitude"], help="Method, or METHOD+REFINER such as wanda+dsnot (repeatable)."),
    sparsity: str = typer.Option("0.1:0.9:0.1", help="Levels: START:STOP:STEP (STOP included) and/or a list "
                                                     "such as 0.5,2:4,4:8."),
    refine: Optional[str] = typer.Option(None, help="Refinement for every method without its own, e.g. dsnot."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for sweep.json, sweep.csv, sweep.png (atomic)."),
    calib: str = typer.Option("c4", help="Calibration: c4, wikitext2, ptb (optionally NAME:SPLIT), a .txt/.jsonl/"
                              ".parquet file, or data-free self[:temperature=T,start=bos|random,batch=B]."),
    nsamples: int = typer.Option(128, help="Number of calibration windows (drawn once for the whole sweep)."),
    seqlen: int = typer.Option(2048, help="Tokens per calibration window."),
    seed: int = typer.Option(0, help="Seed of the calibration sampling."),
    ppl: str = typer.Option("wikitext2", help="Perplexity dataset: wikitext2, c4, ptb, or a file."),
    ppl_seqlen: Optional[int] = typer.Option(None, help="Perplexity window (default: model max positions, <= 2048)."),
    ppl_max_windows: Optional[int] = typer.Option(None, help="Evaluate only the first N windows (quick look; "
                                                             "default: the whole text, the papers' protocol)."),
    knee_margin: float = typer.Option(0.1, help="Relative perplexity rise over dense that marks the knee."),
    option: List[str] = typer.Option([], help="KEY=VALUE setting of the method, refiner or quantizer, e.g. "
                                     "monotone_nm=false (repeatable; a wrong key lists those that apply)."),
    device: str = typer.Option("cpu", help="Compute device: cpu or cuda."),
    batch_size: int = typer.Option(8, help="Calibration windows per forward pass."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output folder."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Prune MODEL at every level, evaluate perplexity, and recommend the essential sparsity."""
    from llmprune.atomic import check_output_dir
    from llmprune.pipeline import protected_inputs
    from llmprune.evals.sweep import SweepConfig, SweepHooks, run_sweep, write_sweep
    from llmprune.evals.sweep_levels import parse_levels
    from llmprune.recipe import Calibration

    from .compress import parse_options

    config = SweepConfig(variants=tuple(method), levels=parse_levels(sparsity), refine=refine,
                         options=_with_seqlen(parse_options(option), seqlen),
                         calibration=Calibration(source=calib, nsamples=nsamples, seqlen=seqlen, seed=seed),
                         eval_dataset=ppl, eval_seqlen=ppl_seqlen, eval_max_windows=ppl_max_windows,
                         knee_margin=knee_margin, device=device, batch_size=batch_size)
    _check(config, ppl_seqlen)
    if ppl_max_windows is not None and ppl_max_windows < 1:
        raise UserInputError(f"--ppl-max-windows {ppl_max_windows}: must be at least 1")
    config.recipes()  # unknown methods/refiners and patterns a refiner cannot keep fail here, before loading
    check_output_dir(output, force=force, protect=protected_inputs(model, calib, ppl))
    from llmprune.model import resolve
    from llmprune.pipeline import library_progress

    with library_progress(not quiet):  # transformers' "Loading weights" bar too
        loaded = resolve(model)
    log = lambda line: typer.echo(line, err=True)  # noqa: E731  (one line per level, even with --quiet: no bars)
    result = run_sweep(loaded.model, loaded.tokenizer, config, model_name=model, progress=not quiet,
                       hooks=SweepHooks(log=log))
    write_sweep(result, output, force=force)
    for line in recommendation(result):
        typer.echo(line)
    typer.echo(f"wrote {output}/sweep.json, sweep.csv, sweep.png")
    failed = result.failures()
    for point in failed:
        typer.echo(f"error: {point.variant} at {point.sparsity} failed: {point.error}", err=True)
    if failed:
        raise typer.Exit(1)


def recommendation(result) -> list[str]:
    """One printed line per variant: the essential sparsity and the knee (rule: evals/sweep.py)."""
    lines = []
    for variant, k in result.knees().items():
        head, margin, dense = f"{result.model} {variant}:", f"{result.margin:.0%}", result.dense_ppl
        nm = f"; N:M within the margin: {', '.join(k['nm_within_margin']) or 'none'}"
        if k["essential_sparsity"] is None and k["knee_sparsity"] is None:
            lines.append(f"{head} no unstructured level swept (dense ppl {dense:.3f}){nm}")
        elif k["essential_sparsity"] is None:
            lines.append(f"{head} no level stays within {margin} of dense ppl {dense:.3f}; already "
                         f"{k['knee_sparsity']:g} gives {k['knee_ppl']:.3f}; sweep lower levels{nm}")
        else:
            after = (f"at {k['knee_sparsity']:g} ppl {k['knee_ppl']:.3f} exceeds dense by more than {margin}"
                     if k["knee_sparsity"] is not None else f"no knee up to the highest level swept (margin {margin})")
            lines.append(f"{head} essential sparsity {k['essential_sparsity']:g} (ppl {k['essential_ppl']:.3f} vs "
                         f"dense {dense:.3f}); {after}{nm}")
    return lines


def _with_seqlen(options: tuple, seqlen: int) -> tuple:
    """DSnoT's threshold is tuned on sums over a calibration window: tell it the window length."""
    values = dict(options)
    values.setdefault("calib_seqlen", seqlen)
    return tuple(sorted(values.items()))


def _check(config, ppl_seqlen: Optional[int]) -> None:
    if not config.variants:
        raise UserInputError("give at least one --method, e.g. --method magnitude")
    repeated = next((v for i, v in enumerate(config.variants) if v in config.variants[:i]), None)
    if repeated is not None:  # it would run every level twice and write each row twice
        raise UserInputError(f"--method {repeated} is given twice; give each method once")
    if ppl_seqlen is not None and ppl_seqlen < 2:
        raise UserInputError(f"--ppl-seqlen {ppl_seqlen}: must be at least 2")
    if config.batch_size < 1:
        raise UserInputError(f"--batch-size {config.batch_size}: must be at least 1")
    if not 0 < config.knee_margin:
        raise UserInputError(f"--knee-margin {config.knee_margin}: must be a positive fraction, e.g. 0.1 for 10%")
    from llmprune.pipeline import check_device

    check_device(config.device)
    from llmprune.evals.perplexity import load_eval_text

    load_eval_text(config.eval_dataset)  # an unknown set or missing data fails before the model loads
    from llmprune.data.calibration import calibration_source, is_self_generated

    source = str(config.calibration.source).strip()
    if not is_self_generated(source):
        calibration_source(source)  # so does an unknown or missing calibration source
