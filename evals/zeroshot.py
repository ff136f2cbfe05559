"""Zero-shot accuracy through lm-eval's Python API, on the model object exactly as llmprune loaded it.

``run_zeroshot`` wraps the in-memory model in ``lm_eval.models.huggingface.HFLM(pretrained=model, ...)`` (packed
modules included: no dense re-load) and runs ``lm_eval.simple_evaluate`` with a ``TaskManager`` whose
``include_path`` is ``evals/tasks`` (offline copies of the standard tasks).

Task-name rule (``resolve_tasks``): a standard name (``arc_easy``, ``arc_challenge``, ``piqa``, ``boolq``,
``hellaswag``) runs our offline copy ``llmprune_<name>`` when ``LLMPRUNE_DATA_DIR`` holds its files; otherwise
lm-eval's own Hub task of that name when online, and ``DataNotFound`` when ``HF_HUB_OFFLINE=1``. Any other name must
be an lm-eval task (or one in a user ``include_path``); unknown names fail with a "did you mean". The offline copies
use lm-eval's prompts, targets and metrics verbatim; differences are listed in ``evals/tasks/local_data.py``
(HellaSwag's derived context; few-shot examples come from the evaluation split because no train split is local).

Scale-out: for a big zero-shot run use lm-eval's own data-parallel path, e.g.
``accelerate launch -m llmprune.evals.lm_eval_cli --model hf --model_args pretrained=DIR --tasks llmprune_arc_easy``
(lm-eval's CLI with llmprune imported, so packed folders load, and these task copies on its include path).
"""
from __future__ import annotations

import difflib
import json
import logging
import math
import sys
import traceback
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from llmprune.errors import DataNotFound, UserInputError, require
from llmprune.settings import cache_dir, hub_offline

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
LOCAL = ("arc_easy", "arc_challenge", "piqa", "boolq", "hellaswag")
PREFIX = "llmprune_"


@dataclass(frozen=True)
class TaskChoice:
    """A requested name, the lm-eval task that runs it, and where its data comes from (local | hub | include)."""

    requested: str
    task: str
    source: str


@dataclass
class TaskScore:
    task: str
    source: str
    samples: int
    acc: float | None
    acc_stderr: float | None
    acc_norm: float | None
    acc_norm_stderr: float | None


@dataclass
class ZeroShotResult:
    """Scores per task, and per example the chosen answer (argmax log-likelihood) and every choice's log-likelihood."""

    scores: list[TaskScore]
    answers: dict[str, list[int]] = field(default_factory=dict)
    loglikelihoods: dict[str, list[list[float]]] = field(default_factory=dict)
    config: dict = field(default_factory=dict)

    def mean_acc(self) -> float | None:
        values = [s.acc for s in self.scores if s.acc is not None]
        return sum(values) / len(values) if values else None

    def to_dict(self) -> dict:
        return {"scores": [asdict(s) for s in self.scores], "mean_acc": self.mean_acc(), "config": self.config,
                "answers": self.answers}

    def table(self) -> str:
        """Markdown: task | source | n | acc ± stderr | acc_norm ± stderr."""
        lines = ["| task | source | n | acc | acc_norm |", "|---|---|---:|---:|---:|"]
        for s in self.scores:
            lines.append(f"| {s.task} | {s.source} | {s.samples} | {_pm(s.acc, s.acc_stderr)} "
                         f"| {_pm(s.acc_norm, s.acc_norm_stderr)} |")
        return "\n".join(lines)


def _pm(value, stderr) -> str:
    if value is None:
        return "—"
    return f"{value:.4f} ± {stderr:.4f}" if stderr is not None else f"{value:.4f}"


def _local_ready(name: str) -> bool:
    from .tasks.local_data import missing_files

    return not missing_files(name)


def lm_eval_task_names() -> list[str]:
    """Every task/group/tag name lm-eval knows, cached per lm-eval version (building lm-eval's index takes ~15 s)."""
    lm_eval = require("lm_eval", "eval")
    path = cache_dir() / f"lm_eval_tasks-{getattr(lm_eval, '__version__', 'unknown')}.json"
    if path.is_file():
        return json.loads(path.read_text())
    from lm_eval.tasks import TaskManager

    names = sorted(TaskManager().all_tasks)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{id(names)}")
    tmp.write_text(json.dumps(names))
    tmp.replace(path)
    return names


def _include_names(include_path) -> set[str]:
    if not include_path:
        return set()
    from lm_eval.tasks import TaskManager

    return set(TaskManager(include_defaults=False, include_path=[str(p) for p in include_path]).all_tasks)


def _choose(name: str, user_names: set[str]) -> TaskChoice:
    if name in user_names:
        return TaskChoice(name, name, "include")
    local = name[len(PREFIX):] if name.startswith(PREFIX) else name
    if local in LOCAL:
        if _local_ready(local):
            return TaskChoice(name, PREFIX + local, "local")
        if hub_offline(datasets=True) or name.startswith(PREFIX):
            from .tasks.local_data import _paths

            _paths(local)  # raises DataNotFound naming the missing file and LLMPRUNE_DATA_DIR
        return TaskChoice(name, local, "hub")
    known = lm_eval_task_names()
    if name in known:
        return TaskChoice(name, name, "hub")
    close = difflib.get_close_matches(name, list(LOCAL) + known, n=1)
    hint = f"did you mean '{close[0]}'?" if close else f"offline tasks: {', '.join(LOCAL)}"
    raise UserInputError(f"unknown zero-shot task '{name}'; {hint}")


def resolve_tasks(tasks: list[str], include_path=None) -> list[TaskChoice]:
    """Map requested names to lm-eval tasks following the rule in the module docstring."""
    names = [t.strip() for t in tasks if t and t.strip()]
    if not names:
        raise UserInputError("--tasks is empty; give e.g. --tasks arc_easy,piqa")
    user_names = _include_names(include_path)
    return [_choose(name, user_names) for name in names]


def _metric(row: dict, key: str) -> float | None:
    """lm-eval's ``"<metric>,<filter>"`` value; None when absent, NaN or the "N/A" lm-eval writes for a stderr."""
    value = row.get(f"{key},none")
    if not isinstance(value, (int, float)) or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)


def _score(choice: TaskChoice, results: dict, counts: dict) -> TaskScore:
    row = results.get(choice.task, {})
    samples = counts.get(choice.task, {}).get("effective", 0)
    return TaskScore(choice.requested, choice.source, int(samples), *(_metric(row, key) for key in
                     ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr")))


def _answers(samples: list[dict]) -> tuple[list[int], list[list[float]]]:
    ordered = sorted(samples, key=lambda s: s["doc_id"])
    lls = [[float(r[0]) for r in s["filtered_resps"]] for s in ordered]
    return [max(range(len(ll)), key=ll.__getitem__) for ll in lls], lls


def _evaluate(lm, choices: list[TaskChoice], manager, options: dict) -> dict:
    from lm_eval import simple_evaluate

    try:
        with git_hash_without_stderr():
            return simple_evaluate(model=lm, tasks=[c.task for c in choices], task_manager=manager,
                                   log_samples=True, **options)
    except AssertionError:  # lm-eval asserts that each answer fits the model's window, and has no way around it
        if traceback.extract_tb(sys.exc_info()[2])[-1].name != "_loglikelihood_tokens":
            raise
        raise UserInputError(f"tasks {', '.join(c.requested for c in choices)}: an answer is longer than the "
                             f"model's context ({lm.max_length} tokens), which lm-eval cannot score; drop that task "
                             f"or evaluate a model with a longer context") from None
    except (ConnectionError, OSError) as exc:
        if isinstance(exc, DataNotFound):
            raise
        hub = [c.task for c in choices if c.source == "hub"]
        raise DataNotFound(f"tasks {', '.join(hub) or '?'}: dataset download failed ({exc.__class__.__name__}); "
                           f"go online or set LLMPRUNE_DATA_DIR to a folder with the offline copies") from None


@contextmanager
def git_hash_without_stderr():
    """lm-eval records the working directory's git commit by running ``git describe`` with stderr inherited, so
    outside a repository every run prints "fatal: not a git repository". The same lookup, with git's stderr
    discarded (lm-eval's own fallback, reading ``.git`` files, is kept)."""
    import subprocess

    import lm_eval.evaluator as evaluator

    original = getattr(evaluator, "get_git_commit_hash", None)
    if original is None:  # another lm-eval version: nothing to replace
        yield
        return

    def quiet_hash():
        try:
            return subprocess.check_output(["git", "describe", "--always"], stderr=subprocess.DEVNULL).strip().decode()
        except (subprocess.CalledProcessError, FileNotFoundError):
            from lm_eval.loggers.utils import get_commit_from_path

            return get_commit_from_path(Path.cwd())

    evaluator.get_git_commit_hash = quiet_hash
    try:
        yield
    finally:
        evaluator.get_git_commit_hash = original


QUIET_LOGGERS = ("lm_eval", "transformers", "datasets")


@contextmanager
def library_output(enabled: bool):
    """``enabled=False`` (``--quiet``): while the block runs, no tqdm bar at all (lm-eval's per-task request
    building, "Tokenizing inputs", "Running loglikelihood requests"; datasets' bars), no lm-eval, transformers or
    datasets log line below ERROR, and no Python warning; everything is restored afterwards.

    lm-eval 0.4.13 offers no switch for its bars, hence ``llmprune.quiet.no_progress_bars``."""
    if enabled:
        yield
        return
    from llmprune.quiet import no_progress_bars

    levels = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    try:
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
        with warnings.catch_warnings(), no_progress_bars():
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def run_zeroshot(model, tokenizer, tasks: list[str], *, batch_size: int = 1, limit: float | None = None,
                 num_fewshot: int | None = None, device: str = "cpu", include_path=None,
                 progress: bool = True) -> ZeroShotResult:
    """Run lm-eval ``tasks`` on ``model`` (any causal LM module, packed layers included) and return the scores.

    ``limit`` caps examples per task (a fraction when < 1), ``num_fewshot`` defaults to each task's own (0 here),
    ``include_path`` adds folders of user task YAMLs. The model is moved to ``device`` if it is elsewhere.
    ``progress=False`` silences lm-eval's bars and library log lines (``library_output``).
    """
    require("lm_eval", "eval")
    with library_output(progress):
        return _run(model, tokenizer, tasks, batch_size=batch_size, limit=limit, num_fewshot=num_fewshot,
                    device=device, include_path=include_path)


def _run(model, tokenizer, tasks: list[str], *, batch_size, limit, num_fewshot, device, include_path) -> ZeroShotResult:
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    choices = resolve_tasks(tasks, include_path)
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    if str(getattr(model, "device", device)) != str(device):
        model = model.to(device)
    model.eval()
    paths = [str(TASKS_DIR)] + [str(p) for p in include_path or ()]
    manager = TaskManager(include_path=paths, include_defaults=any(c.source == "hub" for c in choices))
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    options = {"limit": limit, "num_fewshot": num_fewshot}
    out = _evaluate(lm, choices, manager, options)
    result = ZeroShotResult(scores=[_score(c, out["results"], out.get("n-samples", {})) for c in choices],
                            config={"batch_size": batch_size, "limit": limit, "num_fewshot": num_fewshot,
                                    "device": str(device), "lm_eval": _lm_eval_version(),
                                    "tasks": {c.requested: {"task": c.task, "source": c.source} for c in choices}})
    if num_fewshot and any(c.source == "local" for c in choices):
        result.config["note"] = "few-shot examples of local tasks come from the evaluation split (no local train split)"
    for c in choices:
        result.answers[c.requested], result.loglikelihoods[c.requested] = _answers(out["samples"].get(c.task, []))
    return result


def _lm_eval_version() -> str:
    import lm_eval

    return getattr(lm_eval, "__version__", "unknown")
