"""The whole ``compress`` job as a library call: check the output, load, calibrate, compress, pack, save.

The CLI, the batch runner and ``--from-manifest`` all go through ``run_compress`` so a run is reproducible from its
manifest alone.
"""
from __future__ import annotations

import platform
import re
import shutil
import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .errors import UserInputError
from .model.fingerprint import changed_files, model_files
from .recipe import Calibration, Recipe

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
DEVICE_NAME = re.compile(r"cpu|cuda(:\d+)?")


@dataclass(frozen=True)
class Replay:
    """What ``--from-manifest`` checks the re-run against: the inputs the recorded run read."""
    manifest: str  # the llmprune.json re-run
    calibration_sha256: str | None  # the recorded windows' sha256 (None: another model, its own windows)
    model_files: dict | None  # the recorded model files' sha256 (None: another model, or a Hub model)
    calibrated: bool = True  # the recorded run read calibration data
    versions: dict = field(default_factory=dict)  # the recorded run's library versions
    allow_changes: bool = False  # --allow-changed-inputs: run on changed inputs, recording which changed


@dataclass(frozen=True)
class CompressJob:
    model: str
    output: Path
    recipe: Recipe
    calibration: Calibration = field(default_factory=Calibration)
    format: str = "dense"
    export: str | None = None
    device: str = "cpu"
    dtype: str = "float32"
    batch_size: int = 8
    forward_dtype: str | None = None  # calibration forwards in another dtype (e.g. bfloat16); stats stay float32
    force: bool = False
    spill_to_disk: bool = False  # a dense output's finished weights in disk-backed memory, beside the output
    progress: bool = True
    argv: tuple[str, ...] = ()
    revision: str | None = None  # a Hub model's commit (``--from-manifest`` pins the one recorded)
    replay: Replay | None = None  # ``--from-manifest``: the recorded inputs to check


def versions() -> dict:
    import transformers

    from . import __version__

    return {"llmprune": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def check_device(device: str) -> None:
    """``cpu``, ``cuda`` or ``cuda:N`` on a machine that has it; one line otherwise (torch's own error is a
    traceback, after the model was loaded)."""
    if not DEVICE_NAME.fullmatch(str(device)):
        raise UserInputError(f"--device {device}: choose cpu or cuda (cuda:N for another GPU)")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserInputError(f"--device {device}: CUDA is not available here; use --device cpu")
    if ":" in device and int(device.split(":")[1]) >= torch.cuda.device_count():
        raise UserInputError(f"--device {device}: this machine has {torch.cuda.device_count()} GPU(s)")


def check_job(job: CompressJob) -> None:
    """Every job setting that needs no model, checked before anything is loaded (a re-run's too: ``replay``)."""
    if job.dtype not in DTYPES:
        raise UserInputError(f"--dtype {job.dtype}: choose one of {', '.join(DTYPES)}")
    if job.forward_dtype not in (None, *DTYPES):
        raise UserInputError(f"--forward-dtype {job.forward_dtype}: choose one of {', '.join(DTYPES)}")
    check_device(job.device)
    if isinstance(job.batch_size, bool) or not isinstance(job.batch_size, int) or job.batch_size < 1:
        raise UserInputError(f"--batch-size {job.batch_size!r}: must be a whole number >= 1")
    if job.recipe.sparsity is None and job.recipe.quant is None:
        raise UserInputError("nothing to do: give --sparsity and/or --quant")
    from .compress import check_format
    from .plan import Plan

    Plan.check_steps(job.recipe)  # --option values and the refiner's rules, before the model is loaded
    check_format(job.recipe, job.format)
    if job.spill_to_disk and job.format != "dense":
        raise UserInputError(f"--spill-to-disk is for dense outputs; --format {job.format} already frees each "
                             f"layer's dense weight as it packs it: drop --spill-to-disk")
    if job.export not in (None, "compressed-tensors"):
        raise UserInputError(f"--export {job.export}: the only export is 'compressed-tensors'")


@contextmanager
def library_progress(enabled: bool):
    """Silence the libraries' own progress bars (transformers' "Loading weights", compressed-tensors' "Compressing
    model") when the user asked for --quiet."""
    from transformers.utils import logging as hf_logging

    from .quiet import no_progress_bars

    was_enabled = hf_logging.is_progress_bar_enabled()
    if not enabled:
        hf_logging.disable_progress_bar()
    try:
        with (no_progress_bars() if not enabled else nullcontext()):
            yield
    finally:
        if was_enabled and not enabled:
            hf_logging.enable_progress_bar()


def run_compress(job: CompressJob) -> str:
    """Run the job; returns a short human summary. Nothing is written unless everything succeeds."""
    with library_progress(job.progress):
        return _run_compress(job)


def _run_compress(job: CompressJob) -> str:
    from .atomic import check_output_dir, nearest_existing_parent
    from .compress import build_plan, compress_
    from .model import resolve
    from .model.load import compressible_config

    check_job(job)
    protect = _inputs(job)
    for target in _targets(job):
        check_output_dir(target, force=job.force, protect=protect)
    config = compressible_config(job.model)  # checks from the files alone, before a load that may take minutes
    if job.spill_to_disk:
        _warn_converted_weights(job, config)
    if job.recipe.reads_data():
        _check_data_before_loading(job, config)
    t0 = time.perf_counter()
    loaded = resolve(job.model, dtype=DTYPES[job.dtype], revision=job.revision)
    files = model_files(loaded.source, progress=job.progress)  # hashed once: checked now, recorded at the end
    changed = _check_model_files(job, files)
    _warn_other_versions(job)
    plan = build_plan(loaded.model, job.recipe, job.format)  # every shape check, before any calibration
    if job.export:
        from .export_ct import check_plan

        check_plan(loaded.model, plan)
    calib = None
    if any(plan.needs(name) for name in plan.targets):
        from .data.calibration import calibration_windows
        from .model.layers import check_seqlen

        check_seqlen(loaded.model, job.calibration.seqlen, "--seqlen")  # again: a Hub config may be read only now
        calib = calibration_windows(loaded.tokenizer, job.calibration, model=loaded.model, progress=job.progress)
        recorded = job.replay and job.replay.calibration_sha256
        if recorded and recorded != calib.sha256:
            changed.append(_changed(job, f"the calibration windows (sha256 {calib.sha256[:12]} vs recorded "
                                         f"{recorded[:12]}: the data or the tokenizer changed)"))
    t_load = time.perf_counter() - t0
    report = compress_(loaded.model, job.recipe, calib, device=job.device, batch_size=job.batch_size,
                       progress=job.progress, pack=job.format,  # finished layers packed at once (memory)
                       forward_dtype=DTYPES[job.forward_dtype] if job.forward_dtype else None,
                       spill_dir=nearest_existing_parent(job.output) if job.spill_to_disk else None)
    manifest = {
        "model": {**loaded.source, "files": files, **_parent(loaded.source)},
        "recipe": job.recipe.to_dict(),
        "calibration": None if calib is None else {**asdict(job.calibration), "sha256": calib.sha256,
                                                   "description": calib.description},
        "job": {"format": job.format, "export": job.export, "device": job.device, "dtype": job.dtype,
                "batch_size": job.batch_size, "forward_dtype": job.forward_dtype,
                "spill_to_disk": job.spill_to_disk},
        "report": report.to_dict(),
        "timings": {"load_and_calibration_seconds": round(t_load, 3), **report.timings},
        "versions": versions(),
        "command": list(job.argv),
    }
    if job.replay is not None:
        manifest["replay"] = {"manifest": job.replay.manifest, "changed": changed}
    _save(job, loaded, report, manifest)
    bits, outliers = report.bits_per_param(), report.outlier_fraction()
    quant = "" if bits is None else f", {bits:.3f} bits/param"
    quant += "" if outliers is None else f" ({100 * outliers:.2f}% outliers)"
    recipe = job.recipe
    what = " ".join(str(part) for part in (recipe.sparsity and f"{recipe.method} {recipe.sparsity}", recipe.quant)
                    if part)  # a quant-only run names no pruning method
    return (f"saved {job.output} — {what}: achieved sparsity {report.achieved_sparsity():.4f}{quant} over "
            f"{len(report.records)} Linear layers in {report.timings.get('compress_seconds', 0):.1f} s")


def _warn_converted_weights(job: CompressJob, config) -> None:
    """Spilling saves memory only if the other weights stay mmapped from the checkpoint, i.e. load in its dtype."""
    stored = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    stored = str(stored).removeprefix("torch.") if stored is not None else None
    if stored in DTYPES and stored != job.dtype:
        warnings.warn(f"--spill-to-disk: the checkpoint holds {stored} weights and --dtype {job.dtype} converts "
                      f"every one of them into RAM; give --dtype {stored} to keep them mapped from the file",
                      stacklevel=3)


def _check_data_before_loading(job: CompressJob, config) -> None:
    """A missing calibration file or a window longer than the model's positions (read from its config) is one line
    in a second, not after the model has loaded."""
    from .data.calibration import check_calibration_source
    from .model.layers import check_seqlen

    if job.replay is not None and not job.replay.calibrated:
        raise UserInputError(f"{job.replay.manifest}: the recorded run read no calibration data, but its recipe "
                             f"needs it (an edited manifest?); compress again without --from-manifest")
    check_calibration_source(job.calibration.source)
    check_seqlen(config, job.calibration.seqlen, "--seqlen")  # a config read only when loading (None) says nothing
    check_calibration_memory(config, job.calibration, job.device, job.forward_dtype or job.dtype)


def check_calibration_memory(config, calibration, device: str, dtype: str) -> None:
    """The layer loop keeps every calibration window's hidden states on ``device`` (as the reference code does): a
    run whose windows alone cannot fit is refused now, not killed by the kernel after minutes of loading."""
    import psutil

    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = getattr(text, "hidden_size", None) or getattr(text, "n_embd", None)
    if not isinstance(hidden, int):
        return
    tokens = calibration.nsamples * calibration.seqlen
    need = tokens * hidden * DTYPES[dtype].itemsize + tokens * 8  # hidden states + the token ids on the CPU
    if str(device).startswith("cuda") and torch.cuda.is_available():
        free, where = torch.cuda.mem_get_info(torch.device(device))[0], str(device)
    else:
        free, where = psutil.virtual_memory().available, "this machine"
    if need > free:
        raise UserInputError(f"--nsamples {calibration.nsamples} x --seqlen {calibration.seqlen}: the calibration "
                             f"hidden states need {need / 2**30:.1f} GiB ({tokens} tokens x {hidden} x {dtype}) and "
                             f"{where} has {free / 2**30:.1f} GiB free; lower --nsamples or --seqlen")


def _parent(source: dict) -> dict:
    """``{"parent": ...}`` when the input is itself an llmprune output: the run that made it (its model, recipe,
    calibration and achieved sparsity; its own parent nested), so the card can name the base model and say the
    input was pruned before; else ``{}``."""
    from .manifest import read_if_any

    earlier = read_if_any(source["path"]) if source.get("kind") == "folder" else None
    if earlier is None or not isinstance(earlier.get("model"), dict):
        return {}
    calibration = earlier.get("calibration")
    model = {k: v for k, v in earlier["model"].items() if k != "files"}
    return {"parent": {"model": model, "recipe": earlier.get("recipe"),
                       "calibration": {k: calibration.get(k) for k in ("source", "nsamples", "seqlen", "seed")}
                       if isinstance(calibration, dict) else None,
                       "achieved_sparsity": (earlier.get("report") or {}).get("achieved_sparsity")}}


def _check_model_files(job: CompressJob, files: dict | None) -> list[str]:
    """Before any work, the model files a re-run loaded against those the manifest recorded."""
    recorded = job.replay and job.replay.model_files
    if not recorded:
        return []
    differ = changed_files(recorded, files or {})
    return [_changed(job, f"the model files {', '.join(differ)}")] if differ else []


def _warn_other_versions(job: CompressJob) -> None:
    """Other library versions may compute other weights from the same inputs: said once, not refused (a fix
    in a new version is a reason to re-run)."""
    recorded = job.replay.versions if job.replay is not None else {}
    now = versions()
    other = [f"{k} {recorded[k]} -> {now[k]}" for k in now if k in recorded and recorded[k] != now[k]]
    if other:
        warnings.warn(f"the recorded run used other versions ({', '.join(other)}): the weights may differ slightly",
                      stacklevel=3)


def _changed(job: CompressJob, what: str) -> str:
    """An input of a re-run that differs from the recorded run's: refused, or with --allow-changed-inputs a
    warning (the new manifest lists it under ``replay.changed``)."""
    if not job.replay.allow_changes:
        raise UserInputError(f"--from-manifest: {what} differ from the recorded run's, so the result would too; "
                             f"restore them, or pass --allow-changed-inputs to run anyway")
    warnings.warn(f"{what} differ from the recorded run's: the weights will differ from the recorded ones",
                  stacklevel=3)
    return what


def export_dir(output: Path) -> Path:
    """``--export compressed-tensors`` writes a sibling folder ``<OUTPUT>.compressed-tensors`` (vLLM/transformers)."""
    return Path(f"{output}.compressed-tensors")


def _save(job: CompressJob, loaded, report, manifest: dict) -> None:
    """The llmprune folder and its export are staged side by side and renamed into place together: a failure or an
    interrupt anywhere leaves both previous outputs (``--force``) as they were."""
    from .atomic import atomic_dirs
    from .checkpoint import write_checkpoint
    from .packing import pack_layers

    layers = pack_layers(loaded.model, report, job.format)
    targets = _targets(job)
    with atomic_dirs(targets, job.force, protect=_inputs(job)) as staged:
        if len(staged) == 2:
            from .export_ct import write_compressed_tensors

            write_compressed_tensors(loaded.model, report, staged[1], recipe=job.recipe, tokenizer=loaded.tokenizer)
            manifest["export"] = {"format": "compressed-tensors", "path": str(targets[1].absolute())}
        write_checkpoint(loaded.model, staged[0], layers=layers, manifest_extra=manifest, tokenizer=loaded.tokenizer)
    _drop_replaced_export(job)


def _drop_replaced_export(job: CompressJob) -> None:
    """A forced run without ``--export`` over an output that had one: the old export would stay beside a folder it
    no longer matches (and be served as if it did), so it goes, after the new output is in place."""
    from .export_ct import RECORD

    stale = export_dir(job.output).resolve()
    read = [p.resolve() for p in _inputs(job)]
    if job.force and not job.export and (stale / RECORD).is_file() and not any(
            p == stale or stale in p.parents for p in read):
        shutil.rmtree(stale)
        warnings.warn(f"removed {stale}, the export of the output this --force run replaced", stacklevel=3)


def _targets(job: CompressJob) -> list[Path]:
    """The folders a run writes: the llmprune folder, and its compressed-tensors sibling with ``--export``."""
    return [job.output] + ([export_dir(job.output)] if job.export == "compressed-tensors" else [])


def _inputs(job: CompressJob) -> list[Path]:
    return protected_inputs(job.model, job.calibration.source)


def protected_inputs(*specs) -> list[Path]:
    """What ``--force`` must never delete: the local files a run reads (a model folder or .gguf, a calibration or
    evaluation file), the data directory named sources come from, and llmprune's cache (aliases' converted models)."""
    from .settings import cache_dir, data_dir

    paths = [Path(p) for p in specs if isinstance(p, str) and p and Path(p).exists()]
    return paths + [p for p in (data_dir(), cache_dir()) if p is not None]
