"""The ``llmprune`` command line (typer). Each sub-command lives in its own module; ``main.py`` wires them."""


def run() -> None:
    """The console script. Ctrl-C while the CLI is still importing gets the same one line as later; SIGTERM unwinds
    like Ctrl-C, so staged outputs are removed on the way out."""
    import sys

    try:
        from llmprune.atomic import raise_on_sigterm
        from llmprune.cli.main import main
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    raise_on_sigterm()
    sys.exit(main())
