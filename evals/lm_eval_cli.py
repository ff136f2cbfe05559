"""``python -m llmprune.evals.lm_eval_cli ...``: lm-eval's own command line for llmprune folders.

lm-eval builds the model before it imports any task code, so a packed folder given as ``--model hf --model_args
pretrained=DIR`` needs llmprune imported first (it registers the quantizer that loads packed layers); and the
offline task copies (``llmprune_arc_easy``, ...) live inside the installed package, not at a path the user knows.
This module does both, then hands the arguments to lm-eval unchanged: ``accelerate launch -m
llmprune.evals.lm_eval_cli --model hf --model_args pretrained=DIR --tasks llmprune_arc_easy`` runs lm-eval's
data-parallel path on a packed folder.

lm-eval's ``--include_path`` takes one folder, so the task copies are not added as that flag (a user's own would
replace them) but to every ``TaskManager`` the CLI builds, beside the user's folder.
"""
from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def task_copies_included():
    """While the block runs, every ``lm_eval.tasks.TaskManager`` also scans llmprune's task copies."""
    import lm_eval.tasks as tasks

    from .zeroshot import TASKS_DIR

    original = tasks.TaskManager

    class WithTaskCopies(original):
        def __init__(self, verbosity=None, include_path=None, *args, **kwargs):
            given = [] if include_path is None else \
                list(include_path) if isinstance(include_path, (list, tuple)) else [include_path]
            super().__init__(verbosity, [str(TASKS_DIR), *given], *args, **kwargs)

    tasks.TaskManager = WithTaskCopies
    try:
        yield
    finally:
        tasks.TaskManager = original


def main() -> None:
    import llmprune  # noqa: F401  (registers the quantizer with transformers once its registry is imported)
    from lm_eval.__main__ import cli_evaluate

    from .zeroshot import git_hash_without_stderr

    with task_copies_included(), git_hash_without_stderr():
        cli_evaluate()


if __name__ == "__main__":
    main()
