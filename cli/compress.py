"""``llmprune compress``: load a model, prune/quantize it layer by layer, save a checkpoint with its manifest."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from llmprune.errors import UserInputError
from llmprune.recipe import Calibration, Recipe, parse_quant, parse_sparsity


# the options --from-manifest takes
MANIFEST_FREE = {"model", "output", "force", "device", "quiet", "from_manifest", "allow_changed_inputs",
                 "spill_to_disk"}


def parse_options(values: list[str]) -> tuple[tuple[str, object], ...]:
    """--option key=value pairs; values parsed as int, float, bool or kept as text."""
    parsed = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserInputError(f"--option {item}: write KEY=VALUE, e.g. --option max_cycles=50")
        lowered = raw.lower()
        if lowered in {"true", "false"}:
            parsed[key] = lowered == "true"
            continue
        for cast in (int, float):
            try:
                parsed[key] = cast(raw)
                break
            except ValueError:
                continue
        else:
            parsed[key] = raw
    return tuple(sorted(parsed.items()))


def _overrides(values: list[str]) -> tuple:
    pairs = []
    for item in values:
        pattern, sep, sparsity = item.rpartition("=")
        if not sep or not pattern:
            raise UserInputError(f"--override {item}: write REGEX=SPARSITY, e.g. --override 'mlp\\.down_proj=0.3'")
        pairs.append((pattern, parse_sparsity(sparsity, f"--override {item}")))
    return tuple(pairs)


def build_recipe(method, sparsity, quant, quantizer, refine, damp, block, ignore, override, option,
                 include_lm_head: bool = False, experts: str = "routed") -> Recipe:
    """Parse every flag at the boundary; the engine receives typed values only."""
    from llmprune.prune import METHODS

    METHODS.get(method)
    if refine is not None:
        from llmprune.refine import REFINERS

        REFINERS.get(refine)
    spec = parse_quant(quant, method=quantizer) if quant else None
    if spec is not None:
        from llmprune.quant import QUANTIZERS

        QUANTIZERS.get(quantizer)
    return Recipe(
        method=method,
        sparsity=parse_sparsity(sparsity) if sparsity not in (None, "dense") else None,
        quant=spec,
        refine=refine,
        damp=damp,
        block=block,
        ignore=tuple(ignore),
        overrides=_overrides(override),
        options=parse_options(option),
        include_lm_head=include_lm_head,
        experts=experts,
    )


def compress_command(
    ctx: typer.Context,
    model: Optional[str] = typer.Argument(None, help="HF folder, .gguf file, Hub id (online), or alias "
                                          "'smollm2-135m'; with --from-manifest: the recorded model if left out."),
    output: Path = typer.Option(..., "--output", "-o", help="Output folder (written atomically)."),
    method: str = typer.Option("wanda", help="Pruning method: magnitude, wanda, sparsegpt, gqsa."),
    sparsity: Optional[str] = typer.Option(None, help="Fraction (0.5), N:M (2:4 keeps 2 of every 4), or 0.5@g16."),
    quant: Optional[str] = typer.Option(None, help="Weight quantization, e.g. w4g128 (4-bit, groups of 128, "
                                        "asymmetric), w4g128s (symmetric)."),
    quantizer: str = typer.Option("gptq", help="Quantizer: rtn, gptq, spqr."),
    refine: Optional[str] = typer.Option(None, help="Refinement after pruning, e.g. dsnot."),
    calib: str = typer.Option("c4", help="Calibration: c4, wikitext2, ptb (optionally NAME:SPLIT), a .txt/.jsonl/"
                              ".parquet file, or data-free self[:temperature=T,start=bos|random,batch=B]."),
    nsamples: int = typer.Option(128, help="Number of calibration windows."),
    seqlen: int = typer.Option(2048, help="Tokens per calibration window."),
    seed: int = typer.Option(0, help="Seed of the calibration sampling."),
    damp: float = typer.Option(0.01, help="Hessian dampening, fraction of the mean diagonal (SparseGPT/GPTQ)."),
    block: int = typer.Option(128, help="Columns per lazy-update block (SparseGPT/GPTQ)."),
    ignore: List[str] = typer.Option([], help="Regex of module names left dense (repeatable)."),
    override: List[str] = typer.Option([], help="REGEX=SPARSITY per-module override (repeatable; first match wins)."),
    option: List[str] = typer.Option([], help="KEY=VALUE setting of the method, refiner or quantizer, e.g. "
                                     "monotone_nm=false (repeatable; a wrong key lists those that apply)."),
    include_lm_head: bool = typer.Option(False, "--include-lm-head", help="Also compress lm_head (untied first)."),
    calib_experts: str = typer.Option("routed", help="MoE models: calibrate each expert on the tokens routed to it "
                                      "(routed) or on every token (all, llm-compressor's default); the outputs "
                                      "follow the routing either way."),
    format: str = typer.Option("dense", "--format", help="Storage: dense, int4, sparse24, sparse24_int4, group_sparse_int4, spqr."),
    export: Optional[str] = typer.Option(None, help="Also export, e.g. compressed-tensors (to the sibling folder "
                                         "OUTPUT.compressed-tensors)."),
    device: str = typer.Option("cpu", help="Compute device for the layer being compressed: cpu or cuda."),
    dtype: str = typer.Option("float32", help="Model dtype while compressing and when saved: float32, float16, bfloat16."),
    batch_size: int = typer.Option(8, help="Calibration windows per forward pass."),
    forward_dtype: Optional[str] = typer.Option(
        None, help="Run the calibration forwards in this dtype (e.g. bfloat16: ~2x faster matmuls on CPU, as the "
                   "reference runs float16 on GPU); statistics and weights stay float32."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output folder."),
    spill_to_disk: bool = typer.Option(
        False, "--spill-to-disk", help="Dense output: keep finished layers' weights in disk-backed memory (unlinked "
        "files beside OUTPUT) so the run needs far less RAM than the model; load the model in its own dtype."),
    from_manifest: Optional[Path] = typer.Option(None, help="Re-run exactly the run recorded in an llmprune.json "
                                                 "(recipe, calibration, format, dtype; on MODEL if given)."),
    allow_changed_inputs: bool = typer.Option(
        False, "--allow-changed-inputs", help="With --from-manifest: run even when the model files or calibration "
        "windows differ from the recorded ones (the new manifest lists them under replay.changed)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Prune (and optionally quantize) MODEL layer by layer and save it to OUTPUT."""
    from llmprune.pipeline import CompressJob, run_compress

    if from_manifest is not None:
        from llmprune.replay import job_from_manifest

        given = [name for name in ctx.params if name not in MANIFEST_FREE and
                 getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"]  # typer vendors its own click
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise UserInputError(f"{flag}: --from-manifest re-runs the recorded recipe; drop {flag} (or drop "
                                 f"--from-manifest and give the whole recipe)")
        job = job_from_manifest(from_manifest, output=output, force=force, device=device, quiet=quiet, model=model,
                                allow_changes=allow_changed_inputs, spill_to_disk=spill_to_disk)
    else:
        if allow_changed_inputs:
            raise UserInputError("--allow-changed-inputs applies to --from-manifest re-runs only; drop it")
        if model is None:
            raise UserInputError("give MODEL (an HF folder, a .gguf file, a Hub id or smollm2-135m), or "
                                 "--from-manifest llmprune.json to re-run a recorded run")
        recipe = build_recipe(method, sparsity, quant, quantizer, refine, damp, block, ignore, override, option,
                              include_lm_head, calib_experts)
        calibration = Calibration(source=calib, nsamples=nsamples, seqlen=seqlen, seed=seed)
        job = CompressJob(model=model, output=output, recipe=recipe, calibration=calibration, format=format,
                          export=export, device=device, dtype=dtype, batch_size=batch_size,
                          forward_dtype=forward_dtype, force=force, spill_to_disk=spill_to_disk,
                          progress=not quiet, argv=("llmprune", *sys.argv[1:]))
    summary = run_compress(job)
    typer.echo(summary)
