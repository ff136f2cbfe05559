"""``python -m llmprune.evals.lm_eval_cli ...``: lm-eval's own command line for llmprune folders.

lm-eval builds the model before it imports any task code, so a packed folder given as ``--model hf --model_args
pretrained=DIR`` needs llmprune imported first (it registers the quantizer that loads packed layers); and the
offline task copies (``llmprune_arc_easy``, ...) live inside the installed package, not at a path the user knows.
This module does both, then hands the arguments to lm-eval unchanged: ``accelerate launch -m
llmprune.evals.lm_eval_cli --model hf --model_args pretrained=DIR --tasks llmprune_arc_easy`` runs lm-eval's
data-parallel path on a packed folder.
"""
from __future__ import annotations

import sys


def with_task_copies(args: list[str]) -> list[str]:
    """``args`` with ``--include_path`` pointing at llmprune's task copies, unless the user gave one."""
    from .zeroshot import TASKS_DIR

    given = any(a == "--include_path" or a.startswith("--include_path=") for a in args)
    return args if given else [*args, "--include_path", str(TASKS_DIR)]


def main() -> None:
    import llmprune  # noqa: F401  (registers the quantizer with transformers once its registry is imported)
    from lm_eval.__main__ import cli_evaluate

    sys.argv = [sys.argv[0], *with_task_copies(sys.argv[1:])]
    cli_evaluate()


if __name__ == "__main__":
    main()
