"""What one ``llmprune batch`` cell does: compress a model with a variant's recipe, load it, evaluate it and measure
its size. ``BatchRunner`` (evals/batch.py) takes these as its defaults; tests replace them with fakes. Heavy imports
(torch, transformers, lm-eval) happen inside each function: the batch module stays cheap to import."""
from __future__ import annotations

from pathlib import Path

from .spec import Evaluations, recipe_from_dict


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
        from .perplexity import default_seqlen, load_eval_text, perplexity, scored_row, smallest_cap

        seqlen = evals.seqlen or default_seqlen(model)
        for name in evals.perplexity:
            on_stage and on_stage(f"ppl {name}")
            text = load_eval_text(name)
            result = perplexity(model, tokenizer, text.text, seqlen=seqlen, device=device,
                                batch_size=evals.batch_size, progress=False, dataset=text.name,
                                max_windows=smallest_cap(text.max_windows, evals.max_windows))
            metrics[f"ppl:{name}"] = result.ppl
            rows += rows_from_perplexity([scored_row(result, text)])
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


def size_metrics(manifest: dict | None, dtype: str, model_spec: str | None = None) -> dict:
    """Achieved sparsity and stored bits per parameter of the compressed Linear layers (dense: dtype bits, and the
    sparsity the input model's own manifest records when it is an llmprune output, else 0), plus ``qbits``, the
    quantizers' own accounting, when the variant is quantized (a fake-quant ``dense`` checkpoint stores float
    weights, so its stored bits say nothing about the quantized representation)."""
    from llmprune.manifest import read_if_any
    from llmprune.model_cards.render import achieved_sparsity, bits_per_param, quant_bits_per_param

    if manifest is None:
        earlier = read_if_any(Path(model_spec).expanduser()) if model_spec else None
        sparsity = achieved_sparsity(earlier) if earlier else None
        return {"sparsity": sparsity or 0.0, "bits": 32.0 if dtype == "float32" else 16.0}
    metrics = {"sparsity": achieved_sparsity(manifest), "bits": bits_per_param(manifest)}
    qbits = quant_bits_per_param(manifest)
    return metrics if qbits is None else {**metrics, "qbits": qbits}
