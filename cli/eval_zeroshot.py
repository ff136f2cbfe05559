"""The zero-shot half of ``llmprune eval``: task names checked before any model is loaded, then lm-eval on the
model as llmprune loaded it (``evals/zeroshot.py``)."""
from __future__ import annotations

from llmprune.errors import UserInputError


def parse_tasks(tasks) -> list[str]:
    """``"arc_easy, piqa"`` or a list -> ``["arc_easy", "piqa"]``."""
    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks or []) if t and t.strip()]
    if not names:
        raise UserInputError("--tasks is empty; give e.g. --tasks arc_easy,piqa")
    return names


def check_tasks(tasks) -> list[str]:
    """Fail fast (unknown name, missing offline data) before the model is loaded; returns the parsed names."""
    from llmprune.evals.zeroshot import resolve_tasks

    names = parse_tasks(tasks)
    resolve_tasks(names)
    return names


def run_zeroshot(loaded_model, tokenizer, tasks, *, batch_size: int = 1, limit: float | None = None,
                 num_fewshot: int | None = None, device: str = "cpu", progress: bool = True):
    """Run the tasks on ``loaded_model`` (packed modules included) and return the ``ZeroShotResult``
    (``.table()`` for the markdown table, ``.to_dict()`` for JSON); ``progress=False`` (``--quiet``) hides
    lm-eval's progress bars and log lines."""
    from llmprune.evals.zeroshot import run_zeroshot as run

    return run(loaded_model, tokenizer, parse_tasks(tasks), batch_size=batch_size, limit=limit,
               num_fewshot=num_fewshot, device=device, progress=progress)
