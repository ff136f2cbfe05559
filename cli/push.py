"""``llmprune push DIR --repo-id USER/NAME``: publish a checked output folder with its model card to the Hub."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def push_command(
    directory: Path = typer.Argument(..., help="An llmprune output folder (with llmprune.json)."),
    repo_id: str = typer.Option(..., "--repo-id", help="Target Hub repository, USER/NAME."),
    private: bool = typer.Option(False, "--private", help="Create the repository as private."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Branch to push to (created if missing)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the files and print the card; upload nothing."),
) -> None:
    """Upload a compressed model and its model card to the Hugging Face Hub (token from `hf auth login`/HF_TOKEN)."""
    from llmprune.hub import push

    plan = push(directory, repo_id, private=private, revision=revision, dry_run=dry_run)
    if dry_run:
        typer.echo(plan.listing())
        typer.echo("\n--- model card (README.md) ---\n")
        typer.echo(plan.card)
        return
    typer.echo(f"pushed {len(plan.files)} files from {plan.directory} to {plan.url}")
