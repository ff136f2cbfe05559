"""``llmprune batch SPEC.yaml``: models x recipes x evaluations, cached and resumable, with a table and plots.

Several GPUs (no scheduler of our own): start one process per device, each with its shard of the cells, then one
plain run that finds every cell cached and writes the report::

    for i in 0 1 2 3; do CUDA_VISIBLE_DEVICES=$i llmprune batch SPEC.yaml --shard $i/4 --device cuda & done; wait
    llmprune batch SPEC.yaml

Big models: the loader places them with accelerate's device map / offload; compression works layer by layer on
``--device``. A large zero-shot run of one model can use lm-eval's own data parallelism:
``accelerate launch -m llmprune.evals.lm_eval_cli --model hf --model_args pretrained=DIR --tasks llmprune_arc_easy``
(packed folders and the offline task copies included; see evals/lm_eval_cli.py).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def escape(text: str) -> str:
    """Labels such as '[sparse24_int4]' would otherwise be read as rich markup."""
    from rich.markup import escape as rich_escape

    return rich_escape(text)


class RichProgress:
    """Overall progress over cells (elapsed, ETA) and the current cell's stages, drawn on stderr with rich."""

    def __init__(self, total: int):
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            TimeRemainingColumn(), console=Console(stderr=True))
        self.overall = self.bar.add_task("all cells", total=total)
        self.cell, self.name = None, ""

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        self.bar.__exit__(*exc)

    def skip(self, text: str) -> None:
        self.bar.console.print(escape(f"skip {text}"))
        self.bar.advance(self.overall)

    def start(self, text: str, stages: int) -> None:
        self.name = escape(text)
        self.cell = self.bar.add_task(self.name, total=stages)

    def stage(self, text: str) -> None:
        if self.cell is not None:
            self.bar.update(self.cell, description=f"  {self.name}: {escape(text)}", advance=1)

    def finish(self, result) -> None:
        if self.cell is not None:
            self.bar.remove_task(self.cell)
        self.cell = None
        outcome = "ok" if result.status == "ok" else f"FAILED: {result.error}"
        self.bar.console.print(escape(f"{result.model} | {result.label}: {outcome} ({result.seconds:.1f} s)"))
        self.bar.advance(self.overall)


def batch_command(
    spec: Path = typer.Argument(..., help="SPEC.yaml: models, recipes (grid), evaluations."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Results folder; an existing one is resumed "
                                          "into (default: spec 'output', else beside the spec: grid.yaml -> grid/, "
                                          "a spec without a suffix -> SPEC.out/)."),
    shard: Optional[str] = typer.Option(None, help="Run only cells INDEX, INDEX+COUNT, ... (e.g. 0/4), no report."),
    device: Optional[str] = typer.Option(None, help="Override the spec's device (cpu, cuda)."),
    keep_models: bool = typer.Option(True, "--keep-models/--no-keep-models",
                                     help="Keep compressed checkpoints in the cache after their evaluation."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress display."),
) -> None:
    """Compress and evaluate every model x recipe cell; resume from the cache; write results.jsonl/.md and plots."""
    from llmprune.evals.batch import parse_shard, run_batch
    from llmprune.evals.spec import load_spec

    parse_shard(shard)
    parsed = load_spec(spec)
    results, written = run_batch(parsed, output, shard=shard, progress=None if quiet else RichProgress,
                                 device=device, keep_models=keep_models)
    failed = [r for r in results if r.status != "ok"]
    for path in written:
        typer.echo(f"wrote {path}")
    typer.echo(f"{len(results) - len(failed)} cells ok, {len(failed)} failed")
    for r in failed:
        typer.echo(f"  failed: {r.model} | {r.label}: {r.error}")
    if failed:
        raise typer.Exit(1)
