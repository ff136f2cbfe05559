"""Re-running a recorded run (``llmprune compress --from-manifest``): the job an ``llmprune.json`` describes, its
model and calibration found from any working directory, and what the re-run checks against the record
(``pipeline.Replay``)."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from .errors import CorruptCheckpoint, UserInputError
from .pipeline import CompressJob, Replay, check_job
from .recipe import Calibration, Recipe


def recorded_model(source: dict) -> tuple[str, str | None]:
    """``(model, revision)`` to load the model a manifest recorded from any working directory: the resolved path
    of a folder or .gguf file (not the spec as typed, which may be relative), the alias, or the Hub id at the
    commit loaded."""
    kind = source.get("kind")
    if kind in ("folder", "gguf"):
        return source["path"], None
    if kind not in ("alias", "hub"):
        raise ValueError(f"model.kind {kind!r} is none of folder, gguf, alias, hub")
    return source["spec"], source.get("revision") if kind == "hub" else None


def recorded_calibration(recorded: dict | None) -> Calibration:
    """The calibration a manifest recorded, a file by the resolved path it was read from (not as typed: a relative
    path would name another file, or none, from another working directory)."""
    if recorded is None:
        return Calibration()
    settings = {k: recorded[k] for k in ("source", "nsamples", "seqlen", "seed")}
    description = recorded.get("description") or {}
    if description.get("origin") == "file" and description.get("path"):
        settings["source"] = description["path"]
    return Calibration(**settings)


def job_from_manifest(path: Path, *, output: Path, force: bool, device: str, quiet: bool,
                      model: str | None = None, allow_changes: bool = False,
                      spill_to_disk: bool = False) -> CompressJob:
    """Rebuild the job recorded in an ``llmprune.json`` (the manifest alone reproduces the run). ``model``, when
    given, runs the recorded recipe on another model instead of the recorded one. The re-run checks its model files
    and calibration windows against the recorded ones (``Replay``)."""
    from .manifest import FORMAT_VERSION

    path = Path(path)
    if path.is_dir():
        path = path / "llmprune.json"
    try:
        data = json.loads(path.read_text())
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"format_version {data.get('format_version')!r} is not {FORMAT_VERSION}")
        recipe = Recipe.from_dict(data["recipe"])
        recorded_calib = data["calibration"]
        calib = recorded_calibration(recorded_calib)
        recorded, revision = recorded_model(data["model"])
        where = str(path.resolve())  # recorded: a relative path means nothing from another folder or on the Hub
        replay = Replay(manifest=where, calibration_sha256=recorded_calib["sha256"] if recorded_calib else None,
                        model_files=data["model"].get("files"), calibrated=recorded_calib is not None,
                        versions=dict(data.get("versions") or {}), allow_changes=allow_changes)
        job = CompressJob(
            model=recorded, output=output, recipe=recipe, calibration=calib, format=data["job"]["format"],
            export=data["job"].get("export"), device=device, dtype=data["job"]["dtype"],
            batch_size=data["job"]["batch_size"], forward_dtype=data["job"].get("forward_dtype"), force=force,
            spill_to_disk=spill_to_disk, progress=not quiet, revision=revision,
            argv=("llmprune", "compress", *(() if model is None else (model,)), "--from-manifest", where,
                  "--output", str(output), *(("--allow-changed-inputs",) if allow_changes else ()),
                  *(("--spill-to-disk",) if spill_to_disk else ())),
            replay=replay)
    except FileNotFoundError:
        raise UserInputError(f"--from-manifest {path}: file not found") from None
    except UserInputError as exc:  # a recorded value the recipe refuses: name the manifest, not only the flag
        raise UserInputError(f"{path} records {exc}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CorruptCheckpoint(f"{path}: not a valid llmprune manifest ({type(exc).__name__}: {exc}); give the "
                                f"llmprune.json of a run") from None
    if model is not None:  # another model: its own files, revision and calibration windows
        job = replace(job, model=model, revision=None,
                      replay=replace(replay, calibration_sha256=None, model_files=None))
    try:
        check_job(job)
    except UserInputError as exc:
        raise UserInputError(f"{path} records {exc}") from None
    return job
