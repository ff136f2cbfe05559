"""What ``llmprune batch`` checks before its first cell: every mistake that would fail each cell in turn (or crash
after the first one) is one line up front, and nothing is written.

- the data sets the spec names resolve (``check_data``);
- every model exists, is not a packed or quantized checkpoint, has a tokenizer (a local folder), and takes the
  spec's window lengths, read from its config alone (``check_models``);
- the output and cache folders can be written and are none of the run's inputs (``check_folders``). Unlike
  ``llmprune compress``'s output, an existing, non-empty folder is fine: a batch resumes into it.
"""
from __future__ import annotations

from pathlib import Path

from llmprune.atomic import check_output_dir, probe_writable
from llmprune.errors import LlmpruneError, UserInputError


def check_data(spec) -> None:
    """Every data set the spec names resolves (calibration source, perplexity texts, zero-shot tasks), before the
    first cell: a misspelled name would otherwise fail every cell, the evaluations only after each compression."""
    from llmprune.data.calibration import calibration_source, is_self_generated

    from .perplexity import load_eval_text
    from .zeroshot import resolve_tasks

    source = str(spec.calibration.get("source", "c4"))
    checks = [] if is_self_generated(source) else [("calibration.source", calibration_source, source)]
    checks += [("evaluations.perplexity", load_eval_text, name) for name in spec.evaluations.perplexity]
    if spec.evaluations.zeroshot:
        checks.append(("evaluations.zeroshot", resolve_tasks, list(spec.evaluations.zeroshot)))
    for key, check, value in checks:
        try:
            check(value)
        except LlmpruneError as exc:  # unknown names, missing files (DataNotFound)
            raise type(exc)(f"{spec.path}: {key}: {exc}") from None


def check_models(spec) -> None:
    """Every model loads as far as its config says, and no window is longer than its context: GPT-2's learned
    positions fail with an IndexError in every cell, rotary models silently score positions they never saw."""
    from llmprune.model.layers import check_seqlen
    from llmprune.model.load import compressible_config
    from llmprune.recipe import Calibration

    windows = [("evaluations.seqlen", spec.evaluations.seqlen)]
    if any(calibrates(variant.recipe) for variant in spec.variants):
        windows.append(("calibration.seqlen", Calibration(**spec.calibration).seqlen))
    for model in spec.models:
        try:
            config = compressible_config(model)  # packed or quantized checkpoints: every cell would refuse
            check_tokenizer(model)
        except LlmpruneError as exc:
            raise type(exc)(f"{spec.path}: models: {exc}") from None
        for key, seqlen in windows:
            if config is not None and seqlen is not None:
                try:
                    check_seqlen(config, seqlen, key)
                except UserInputError as exc:
                    raise UserInputError(f"{spec.path}: model {model}: {exc}") from None


def calibrates(recipe: dict | None) -> bool:
    """Whether a variant reads calibration windows (``Recipe.reads_data``); None is the dense baseline."""
    from .spec import recipe_from_dict

    return recipe is not None and recipe_from_dict(recipe).reads_data()


def check_tokenizer(text: str) -> None:
    """A local HF folder's tokenizer loads and encodes text, before any cell: without tokenizer files its cell would
    fail only when it ran, after the cells before it. Aliases, .gguf files and Hub ids load theirs with the model."""
    from llmprune.model import load

    folder = Path(text).expanduser()
    if load.is_hf_folder(folder):
        load.check_tokenizer(folder)


def default_output(spec_path) -> Path:
    """Beside the spec, named after it: ``grid.yaml`` -> ``grid/``; a spec without a suffix -> ``grid.out/`` (its
    own name is taken by the spec file)."""
    path = Path(spec_path)
    return path.with_suffix("") if path.suffix else path.with_name(f"{path.name}.out")


def check_folders(spec, out: Path, cache: Path, flag: str = "--output") -> None:
    """The output and cache folders: not a file nor under one, writable, and none of the run's inputs (the models,
    data files and folders, llmprune's cache: ``pipeline.protected_inputs``, as compress protects them)."""
    from llmprune.pipeline import protected_inputs

    evals = spec.evaluations
    protect = protected_inputs(*spec.models, str(spec.calibration.get("source", "c4")), *evals.perplexity)
    check_folder(out, protect, flag)
    check_folder(cache, protect, f"{spec.path}: cache" if spec.cache else "cache folder")


def check_folder(folder: Path, protect, flag: str) -> None:
    """One batch folder (``check_folders``); ``flag`` names where it was given, in the error."""
    try:
        if folder.is_dir():
            _check_existing(folder, protect)
        else:  # a new folder is created like compress's: the same checks of where it goes
            check_output_dir(folder, protect=protect)
    except UserInputError as exc:
        raise UserInputError(str(exc).replace("--output", flag, 1)) from None


def _check_existing(folder: Path, protect) -> None:
    """An existing folder is written into (a resumed run), never replaced: it may hold anything but must not be
    one of the inputs, and must take new files."""
    target = folder.resolve()
    for path in protect:
        if Path(path).resolve() == target:
            raise UserInputError(f"--output {folder}: it is the run's input {path}, which the batch would write "
                                 f"into; choose another folder")
        if Path(path).is_dir() and Path(path).resolve() in target.parents:
            raise UserInputError(f"--output {folder}: it is inside the run's input {path}, which the batch would "
                                 f"write into; choose a folder outside it")
    checkpoint = next((name for name in ("llmprune.json", "config.json") if (folder / name).is_file()), None)
    checkpoint = checkpoint or next((p.name for p in folder.glob("*.safetensors")), None)
    if checkpoint:  # results and a cache inside a model folder would be published with it (llmprune push)
        raise UserInputError(f"--output {folder}: it holds a model checkpoint ({checkpoint}), which the batch would "
                             f"write into; choose another folder")
    probe_writable(folder, f"--output {folder}")
