"""Model cards for llmprune output folders: Hub metadata (YAML front matter) + a README rendered from ``card.md.j2``.

Everything on the card comes from the manifest (``llmprune.json``: model source, recipe, calibration, report,
layers, shards, command) and from evaluation result rows, so the card never claims a number that was not measured.
The front matter is produced by ``huggingface_hub.ModelCardData`` (``base_model``, ``library_name``, ``tags``, and
``model-index`` from ``EvalResult``s), i.e. the Hub's own serializer; tests parse it back with ``ModelCard``.

A result row is a dict: ``{"name": "arc_easy", "metric": "acc" | "acc_norm" | "ppl", "value": float,
"stderr": float | None, "samples": int | None, "note": str, "partial": bool}`` (partial: a ``--limit`` or capped
run, kept out of ``model-index``); ``rows_from_zeroshot`` and ``rows_from_perplexity``
build them from ``evals`` results.
"""
from __future__ import annotations

import json
import shlex
from pathlib import Path

# The Hub id behind each llmprune alias (the alias itself is a local conversion of that model's GGUF).
BASE_MODELS = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct"}
# Hub dataset (id, config, split) that each evaluation name stands for, for model-index.
DATASETS = {
    "arc_easy": ("allenai/ai2_arc", "ARC-Easy", "test", "AI2 ARC-Easy"),
    "arc_challenge": ("allenai/ai2_arc", "ARC-Challenge", "test", "AI2 ARC-Challenge"),
    "piqa": ("ybisk/piqa", None, "validation", "PIQA"),
    "boolq": ("aps/super_glue", "boolq", "validation", "BoolQ"),
    "hellaswag": ("Rowan/hellaswag", None, "validation", "HellaSwag"),
    "wikitext2": ("Salesforce/wikitext", "wikitext-2-raw-v1", "test", "WikiText-2"),
    "c4": ("allenai/c4", "en", "validation", "C4"),
    "ptb": ("ptb_text_only", None, "test", "PTB"),
}
_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8, "uint8": 1, "int8": 1, "int16": 2, "int32": 4,
          "int64": 8, "bool": 1}
FILENAME = "README.md"


def base_model(manifest: dict) -> str | None:
    """The Hub id of the uncompressed model, when there is one (Hub specs and known aliases), through the earlier
    llmprune runs an input folder came from (``model.parent``)."""
    for run in (manifest, *earlier_runs(manifest)):
        source = run.get("model") or {}
        spec = source.get("spec")
        if source.get("kind") == "alias" or spec in BASE_MODELS:
            return BASE_MODELS.get(spec)
        if source.get("kind") == "hub":
            return spec
    return None


def earlier_runs(manifest: dict) -> list[dict]:
    """The earlier llmprune runs the input model came from, nearest first (``model.parent``, nested)."""
    runs, source = [], manifest.get("model") or {}
    while isinstance(source.get("parent"), dict):
        runs.append(source["parent"])
        source = source["parent"].get("model") or {}
    return runs


def _pruned(recipe: dict) -> bool:
    """Whether a recorded recipe prunes (a quant-only recipe still holds the default method)."""
    return recipe.get("sparsity") not in (None, "dense")


def _quant_text(quant: dict) -> str:
    """``w4g64`` (``w4`` per row) from a recorded quant spec."""
    return f"w{quant.get('bits')}" + (f"g{quant['group']}" if quant.get("group") else "")


def describe_run(run: dict) -> str:
    """One earlier run in words: ``wanda 2:4, gptq w4g64; calibrated on c4 (128 x 2048 tokens)``."""
    recipe = run.get("recipe") or {}
    quant = recipe.get("quant") or {}
    steps = [f"{recipe.get('method')} {recipe['sparsity']}" if _pruned(recipe) else "",
             f"{quant.get('method')} {_quant_text(quant)}" if quant else ""]
    calibration = run.get("calibration")
    data = (f"; calibrated on {calibration.get('source')} ({calibration.get('nsamples')} x "
            f"{calibration.get('seqlen')} tokens)" if calibration else "")
    return (", ".join(step for step in steps if step) or "no compression step") + data


def _linear_shapes(manifest: dict) -> dict[str, tuple[int, int]]:
    layers = manifest.get("layers") or {}
    if layers:
        return {n: (r["out_features"], r["in_features"]) for n, r in layers.items()}
    report = (manifest.get("report") or {}).get("layers") or {}
    return {n: tuple(r["shape"]) for n, r in report.items() if "shape" in r}


def bits_per_param(manifest: dict) -> float | None:
    """Average stored bits per weight of the compressed Linear layers (codes, scales, masks, outliers; no bias)."""
    tensors = manifest.get("tensors") or {}
    bits = params = 0
    for name, (out_f, in_f) in _linear_shapes(manifest).items():
        stored = [r for k, r in tensors.items() if k.startswith(name + ".") and k != name + ".bias"]
        if not stored:
            continue
        for record in stored:
            count = 1
            for dim in record["shape"]:
                count *= int(dim)
            bits += 8 * _BYTES.get(record["dtype"], 4) * count
        params += out_f * in_f
    return bits / params if params else None


def quant_bits_per_param(manifest: dict) -> float | None:
    """Average bits/parameter by the quantizers' accounting (``llmprune/quant/bits_per_param.py``), whatever the
    storage format; None when nothing was quantized. Older manifests: weighted from the per-layer records."""
    from llmprune.layer_records import weighted_mean

    report = manifest.get("report") or {}
    if report.get("bits_per_param") is not None:
        return float(report["bits_per_param"])
    return weighted_mean(report.get("layers") or {}, "bits_per_param")


def achieved_sparsity(manifest: dict) -> float | None:
    report = manifest.get("report") or {}
    value = report.get("achieved_sparsity")
    return None if value is None else float(value)


def reproduce_command(manifest: dict) -> str | None:
    """The recorded command line (as given); None when the manifest has none (the card then shows the
    ``--from-manifest`` rerun only)."""
    command = manifest.get("command") or []
    if command:
        argv = list(command)
        if Path(argv[0]).name in ("llmprune", "__main__.py"):  # sys.argv[0] is the script path
            argv[0] = "llmprune"
        if argv[0] != "llmprune":
            argv = ["llmprune", "compress", *argv] if argv[0] != "compress" else ["llmprune", *argv]
        return shlex.join(argv)
    return None


def rows_from_zeroshot(result) -> list[dict]:
    """Result rows from an ``evals.zeroshot.ZeroShotResult`` (or its ``to_dict()``); the note says what was run
    (``--limit``, few-shot) so a quick check never reads as the full benchmark."""
    scores = result["scores"] if isinstance(result, dict) else [vars(s) for s in result.scores]
    config = (result.get("config") if isinstance(result, dict) else result.config) or {}
    # --num-fewshot 0 is the zero-shot default: the same measurement, so the same note (and one recorded row)
    extra = "".join(f", {key} {config[key]:g}" for key in ("limit", "num_fewshot")
                    if config.get(key) is not None and (key != "num_fewshot" or config[key]))
    rows = []
    for s in scores:
        for metric in ("acc", "acc_norm"):
            if s.get(metric) is not None:
                rows.append({"name": s["task"], "metric": metric, "value": s[metric],
                             "stderr": s.get(f"{metric}_stderr"), "samples": s.get("samples"),
                             "note": f"lm-eval, {s.get('source', '')} data{extra}",
                             "partial": config.get("limit") is not None})
    return rows


def rows_from_perplexity(rows: list[dict]) -> list[dict]:
    """Result rows from ``llmprune eval --ppl`` rows (``dataset``, ``ppl``, ``seqlen``, ``windows``); a capped run
    (``--ppl-max-windows``) says so."""
    out = []
    for r in rows:
        available = r.get("available_windows")
        capped = available is not None and r.get("windows") is not None and r["windows"] < available
        note = f"seqlen {r.get('seqlen')}" + (f", first {r['windows']} of {available} windows" if capped else "")
        note += f", file sha256 {r['file_sha256'][:12]}" if r.get("file_sha256") else ""
        out.append({"name": r["dataset"], "metric": "ppl", "value": r["ppl"], "stderr": None,
                    "samples": r.get("windows"), "note": note, "partial": capped})
    return out


def _eval_results(rows: list[dict]):
    from huggingface_hub import EvalResult

    out = []
    for row in rows:
        hub_id, config, split, pretty = DATASETS.get(row["name"], (row["name"], None, None, row["name"]))
        out.append(EvalResult(task_type="text-generation", dataset_type=hub_id, dataset_name=pretty,
                              dataset_config=config, dataset_split=split, metric_type=row["metric"],
                              metric_value=round(float(row["value"]), 6),
                              # the settings, so two runs of one benchmark (seqlen, dtype) are told apart
                              metric_name=f"{row['metric']} ({row['note']})" if row.get("note") else None))
    return out


def _tags(manifest: dict) -> list[str]:
    recipe = manifest.get("recipe") or {}
    tags = ["llmprune", "compressed"]
    for pruning in [recipe] + [run.get("recipe") or {} for run in earlier_runs(manifest)]:  # pruned now or before
        if _pruned(pruning):
            tags += ["pruned", "sparse", str(pruning.get("method"))]
            if ":" in str(pruning["sparsity"]):
                tags.append(f"{pruning['sparsity'].replace(':', '-')}-sparsity")
    if recipe.get("quant"):
        tags += ["quantized", f"{recipe['quant'].get('bits')}-bit", str(recipe["quant"].get("method"))]
    if manifest.get("format"):
        tags.append(f"format-{manifest['format']}")
    return list(dict.fromkeys(t for t in tags if t and t != "None"))


def default_name(manifest: dict) -> str:
    """``<base>[-<method>-<sparsity>][-<quantizer>-<quant>]``, e.g. ``SmolLM2-135M-Instruct-wanda-2-4-gptq-w4g128``
    (a quant-only run names no pruning method)."""
    base = base_model(manifest) or Path(str((manifest.get("model") or {}).get("spec") or "model")).name
    recipe = manifest.get("recipe") or {}
    quant = recipe.get("quant") or {}
    parts = [base.split("/")[-1]]
    if _pruned(recipe):
        parts += [str(recipe.get("method") or "llmprune"), str(recipe["sparsity"]).replace(":", "-").replace("@", "-")]
    if quant:
        parts += [str(quant.get("method") or "quant"), _quant_text(quant)]
    return "-".join(parts if len(parts) > 1 else [*parts, "llmprune"])


def card_data(manifest: dict, results: list[dict] | None, model_name: str):
    """``huggingface_hub.ModelCardData`` of the card (the Hub's own metadata schema). Partial runs (``--limit``,
    capped perplexity windows) stay in the card's table with their note but out of ``model-index``, which the Hub
    shows without notes as the benchmark's score."""
    from huggingface_hub import ModelCardData

    complete = [row for row in results or [] if not row.get("partial")]
    base = base_model(manifest)
    return ModelCardData(base_model=base, library_name="llmprune", tags=_tags(manifest), model_name=model_name,
                         pipeline_tag="text-generation",
                         eval_results=_eval_results(complete) if complete else None)


def _with_keys(data: dict | None, keys: str) -> dict:
    """``data`` with every key the template reads present (None when the manifest did not record it)."""
    return {**{key: None for key in keys.split()}, **(data or {})}


def _spqr_settings(recipe_options: dict | None, quant_options: dict | None) -> dict:
    """The settings SpQR ran with: its defaults, overridden by ``--option`` and then by the quant spec's options,
    as ``quant.spqr.settings_of`` resolves them for the quantizer."""
    from llmprune.quant.spqr import settings_of

    return settings_of({**(recipe_options or {}), **(quant_options or {})})


def _context(manifest: dict, results: list[dict] | None, model_name: str, repo_id: str) -> dict:
    recipe = _with_keys(manifest.get("recipe"), "method sparsity refine damp block ignore quant options")
    quant = _with_keys(recipe["quant"], "method bits group symmetric options") if recipe["quant"] else {}
    recipe["pruned"] = _pruned(recipe)
    # dampening and block only mean something to the OBS-based steps that read them (SparseGPT, GQSA, GPTQ); SpQR
    # has its own dampening and settings
    pruned_obs = recipe["pruned"] and recipe["method"] in ("sparsegpt", "gqsa")
    recipe["uses_damp"] = pruned_obs or bool(quant) and quant["method"] == "gptq"
    if quant.get("method") == "spqr":
        from llmprune.quant.uniform import SPQR_DEFAULT_GROUP

        quant["spqr"] = _spqr_settings(recipe["options"], quant["options"])
        quant["group"] = quant["group"] or SPQR_DEFAULT_GROUP
    calibration = manifest.get("calibration")
    calibration = _with_keys(calibration, "source nsamples seqlen seed sha256") if calibration else None
    job = manifest.get("job") or {}
    shards = manifest.get("shards") or []
    return {
        "model_name": model_name, "repo_id": repo_id, "base_model": base_model(manifest),
        "source": _with_keys(manifest.get("model"), "spec kind origin"), "recipe": recipe, "quant": quant,
        "calibration": calibration,
        "sparsity": achieved_sparsity(manifest), "bits": bits_per_param(manifest),
        "qbits": quant_bits_per_param(manifest),
        "outliers": (manifest.get("report") or {}).get("outlier_fraction"),
        "format": manifest.get("format", "dense"), "export": job.get("export"), "dtype": job.get("dtype"),
        "export_name": Path(str((manifest.get("export") or {}).get("path") or "OUT.compressed-tensors")).name,
        "size_mb": sum(s.get("bytes", 0) for s in shards) / 1e6, "layers": len(_linear_shapes(manifest)),
        "results": results or [], "command": reproduce_command(manifest), "versions": manifest.get("versions") or {},
        "skipped": (manifest.get("report") or {}).get("skipped") or {},
        "earlier": [describe_run(run) for run in earlier_runs(manifest)],
    }


GENERATED_MARK = "<!-- generated by llmprune: `llmprune push` re-renders this card; delete this line to keep edits -->"


def render_card(manifest: dict, results: list | None = None, *, model_name: str | None = None,
                repo_id: str | None = None) -> str:
    """The README.md text (front matter + body) for the checkpoint described by ``manifest``.

    ``results`` are result rows (module docstring); without them the manifest's ``evaluations`` rows are used.
    """
    import jinja2

    results = list(results) if results is not None else list(manifest.get("evaluations") or [])
    name = model_name or default_name(manifest)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(Path(__file__).parent)), autoescape=False,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                             undefined=jinja2.StrictUndefined)
    body = env.get_template("card.md.j2").render(**_context(manifest, results, name, repo_id or "USER/NAME"))
    return f"---\n{card_data(manifest, results, name).to_yaml()}\n---\n\n{body.rstrip()}\n\n{GENERATED_MARK}\n"


def write_card(directory, manifest: dict | None = None, results: list | None = None) -> Path:
    """Write ``directory/README.md`` from its ``llmprune.json`` (or the given manifest); returns the path.

    Written to a temp file and renamed, so an existing card is never left half-written.
    """
    directory = Path(directory)
    if manifest is None:
        from llmprune.errors import CorruptCheckpoint

        path = directory / "llmprune.json"
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise CorruptCheckpoint(f"{path}: cannot read the manifest ({exc.__class__.__name__}); write the card "
                                    f"from an llmprune output folder") from None
    return write_text_atomic(directory / FILENAME, render_card(manifest, results))


def write_text_atomic(target: Path, text: str) -> Path:
    """Write ``text`` beside ``target`` and rename it into place (never a half-written card)."""
    return write_texts_atomic({target: text})[0]


def write_texts_atomic(texts: dict[Path, str]) -> list[Path]:
    """Write every text beside its target first, then rename them into place: a failed write changes no target."""
    staged = {target: target.parent / f".{target.name}.tmp" for target in texts}
    try:
        for target, text in texts.items():
            staged[target].write_text(text, encoding="utf-8")
    except BaseException:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)
        raise
    for target, tmp in staged.items():
        tmp.replace(target)
    return list(texts)
