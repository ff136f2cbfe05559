"""The ``llmprune`` command line (typer). Each sub-command lives in its own module; ``main.py`` wires them."""
