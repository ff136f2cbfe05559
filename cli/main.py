"""Entry point of the ``llmprune`` console script.

User errors (``LlmpruneError``) print one line, ``error: <problem and fix>``, and exit with code 2. Any other
exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import typer

from llmprune.atomic import Terminated
from llmprune.errors import LlmpruneError

app = typer.Typer(
    name="llmprune",
    help="Post-training compression for Hugging Face causal LMs: prune, quantize, pack, evaluate, publish.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _register() -> None:
    from . import batch, bench, compress, eval as eval_cmd, push, sweep

    app.command("compress", no_args_is_help=True)(compress.compress_command)
    app.command("eval", no_args_is_help=True)(eval_cmd.eval_command)
    app.command("sweep", no_args_is_help=True)(sweep.sweep_command)
    app.command("batch", no_args_is_help=True)(batch.batch_command)
    app.command("push", no_args_is_help=True)(push.push_command)
    app.command("bench")(bench.bench_command)


def _print_version(value: bool) -> None:
    if value:
        from llmprune import __version__

        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                       help="Print the version and exit.")) -> None:
    """Eager: ``--version`` answers before click asks for a command."""


_register()


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit code (used by tests and ``python -m llmprune``)."""
    before, warnings.formatwarning = warnings.formatwarning, _format_warning
    try:
        return _main(argv)
    finally:
        warnings.formatwarning = before


def _our_code() -> tuple[str, ...]:
    import llmprune
    import llmprune.cli
    import llmprune.evals

    return tuple(str(Path(pkg.__file__).parent) for pkg in (llmprune, llmprune.cli, llmprune.evals))


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """llmprune's own warnings as one ``warning: ...`` line (they are messages to the user, not code locations);
    libraries' warnings keep Python's format."""
    if str(Path(filename).resolve()).startswith(_our_code()):
        return f"warning: {message}\n"
    return _PYTHON_FORMAT(message, category, filename, lineno, line)


_PYTHON_FORMAT = warnings.formatwarning  # the original (catch_warnings does not save formatwarning)


def _main(argv: list[str] | None) -> int:
    try:
        code = app(args=argv, standalone_mode=False)  # without standalone mode an Exit(n) comes back as n
    except LlmpruneError as exc:
        typer.echo(f"error: {exc}", err=True)
        return 2
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        typer.echo("error: aborted", err=True)
        return 1
    except Terminated:
        typer.echo("error: terminated", err=True)
        return 143
    except Exception as exc:  # click usage errors (unknown option, bad value) carry their own message and exit code
        if isinstance(exc, _usage_errors()):
            if exc.format_message():  # a bare command prints its help and nothing more
                typer.echo(f"error: {_usage_line(exc, argv)}", err=True)
            return exc.exit_code
        raise
    if code == 130:  # Ctrl-C: click catches the KeyboardInterrupt and returns 130
        typer.echo("error: interrupted", err=True)
    return code if isinstance(code, int) else 0


def _usage_line(exc, argv: list[str] | None) -> str:
    """Click's usage error as one line naming the problem and where help is (click prints a three-line block).
    Errors from the option parser carry no context: the sub-command is then the first argument, if it is one."""
    message = " ".join(exc.format_message().split())
    ctx = getattr(exc, "ctx", None)
    if ctx is not None:
        command = ctx.command_path
    else:
        args = sys.argv[1:] if argv is None else argv
        named = [c.name for c in app.registered_commands]
        command = "llmprune" + (f" {args[0]}" if args and args[0] in named else "")
    return f"{message[:1].lower()}{message[1:]} (see '{command} --help')"


def _usage_errors() -> tuple[type, ...]:
    """Click's usage-error base class, and typer's vendored copy of it (typer >= 0.22 ships its own click)."""
    import click

    classes: tuple[type, ...] = (click.ClickException,)
    try:
        from typer._click.exceptions import ClickException
    except ImportError:
        return classes
    return (*classes, ClickException)
