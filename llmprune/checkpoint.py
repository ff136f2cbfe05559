"""Save and load llmprune checkpoints: safetensors shards + config + tokenizer + ``llmprune.json`` (written last).

Save is atomic (safetensors #764 shows why in-place overwrites bite): everything goes into a temp dir beside
``out_dir``, which is renamed into place (``atomic.py``); with ``force`` the old folder is moved aside first and
deleted only after the rename. ``--format dense`` writes a plain Hugging Face folder through
``model.save_pretrained``. Load validates the manifest first (``manifest.validate``), then builds the model skeleton
with parameters on the meta device (buffers such as rotary frequencies computed for real), swaps in ``PackedLinear``
skeletons, loads the shards with ``load_state_dict(assign=True)`` and re-ties shared weights (gpt-fast's loading
recipe).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from . import manifest as mf
from .atomic import atomic_dir
from .errors import CorruptCheckpoint, UserInputError
from .formats import get_format
from .merged_projections import refuse_merged
from .model.experts import fused_experts, unfuse_experts_
from .model.layers import get_weight
from .packed_linear import PackedLinear, set_module_

SHARD_BYTES = 2 * 1024**3


def _layer_table(model: nn.Module, layers: dict | None) -> dict:
    """``{name: (format, packed, params)}`` from ``layers`` plus any PackedLinear already in the model."""
    table = {name: (m.format, m.packed(), m.params) for name, m in model.named_modules() if isinstance(m, PackedLinear)}
    table.update(layers or {})
    return table


def _check_storable(records: dict) -> None:
    """One-line error before anything is written for a packed layer that a load could not rebuild (e.g. float64
    scales after ``model.double()``)."""
    for name, rec in records.items():
        try:
            get_format(rec["format"]).tensor_specs(rec["out_features"], rec["in_features"], **rec["params"])
        except UserInputError as exc:
            dtypes = {v for v in rec["params"].values() if isinstance(v, str) and "float" in v}
            hint = (" (cast the model with .to(torch.float32) or .to(torch.float16) first)"
                    if dtypes - {"float16", "bfloat16", "float32"} else "")
            raise UserInputError(f"{name}: cannot be saved: {exc}{hint}") from None


def _layer_record(model: nn.Module, name: str, fmt: str, params: dict) -> dict:
    module = model.get_submodule(name)
    if isinstance(module, PackedLinear):
        out_f, in_f = module.out_features, module.in_features
    else:
        out_f, in_f = get_weight(module).shape
    return {"format": fmt, "in_features": int(in_f), "out_features": int(out_f),
            "bias": getattr(module, "bias", None) is not None, "params": dict(params)}


def _state(model: nn.Module, table: dict) -> tuple[dict, dict]:
    """Tensors to store (dense weights of packed layers replaced by their packed tensors) and ``tied`` aliases."""
    state = {k: v for k, v in model.state_dict().items() if k.rpartition(".")[0] not in table or
             not k.endswith(".weight")}
    for name, (_, packed, _) in table.items():
        state.update({f"{name}.{t}": v for t, v in packed.items()})
    tied, seen = {}, {}
    for key, value in list(state.items()):
        ident = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape), value.dtype)
        if value.numel() and ident in seen:
            tied[key] = seen[ident]
            del state[key]
        else:
            seen[ident] = key
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}, tied


def _write_shards(directory: Path, state: dict) -> list[dict]:
    """Shards of at most ``SHARD_BYTES`` named as ``save_pretrained`` names them, with the index transformers needs
    to load a sharded folder (``model.safetensors.index.json``)."""
    from huggingface_hub import constants, split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    split = split_torch_state_dict_into_shards(state, max_shard_size=SHARD_BYTES)
    for name, keys in split.filename_to_tensors.items():
        save_file({k: state[k] for k in keys}, str(directory / name), metadata={"format": "pt"})
    if split.is_sharded:
        total = sum(v.numel() * v.element_size() for v in state.values())
        index = {"metadata": {**split.metadata, "total_size": total}, "weight_map": split.tensor_to_filename}
        (directory / constants.SAFETENSORS_INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return [mf.shard_record(directory / name) for name in split.filename_to_tensors]


def save(model: nn.Module, out_dir, *, layers: dict | None = None, manifest_extra: dict | None = None,
         tokenizer=None, force: bool = False, report=None, format: str = "dense", recipe=None) -> Path:
    """Write ``model`` to ``out_dir`` (atomically; ``force`` replaces a non-empty folder); ``layers`` maps Linear
    names to ``(format, packed tensors, params)``.

    From Python after ``compress_``: ``report`` (its ``Report``) and ``format`` (e.g. ``"sparse24_int4"``) pack the
    compressed layers as ``llmprune compress --format`` does, and the report (and ``recipe``, when given) go into the
    manifest and the model card. Layers not in ``layers`` (and every other tensor) are stored dense. When every layer
    is ``dense`` the folder is a plain Hugging Face checkpoint. ``manifest_extra`` (recipe, calibration, report,
    timings, versions) is merged into ``llmprune.json``; when it holds a recipe, a model card (README.md) is rendered
    from it. Returns the path.
    """
    model = getattr(model, "_orig_mod", model)  # torch.compile's wrapper: save the model's own names
    if format != "dense":
        from .packing import pack_layers

        get_format(format)  # an unknown name: "did you mean"
        if report is None or layers is not None:
            raise UserInputError(f"format={format!r} packs the layers compress_ compressed: pass report= (the Report "
                                 f"compress_ returned), not layers=")
        layers = pack_layers(model, report, format)
    extra = {**({} if recipe is None else {"recipe": recipe.to_dict()}),
             **({} if report is None else {"report": report.to_dict()}), **(manifest_extra or {})}
    manifest_extra = extra or None
    with atomic_dir(out_dir, force) as tmp:
        write_checkpoint(model, tmp, layers=layers, manifest_extra=manifest_extra, tokenizer=tokenizer)
    return Path(out_dir)


def write_checkpoint(model: nn.Module, directory: Path, *, layers: dict | None = None,
                     manifest_extra: dict | None = None, tokenizer=None) -> None:
    """``save``'s writing, into an existing empty (staged) folder: callers that commit several outputs together
    (a compression and its export) stage them with ``atomic.atomic_dirs``."""
    refuse_merged(model, "save")
    table = _layer_table(model, layers)
    formats = {fmt for fmt, _, _ in table.values()}
    overall = "dense" if formats <= {"dense"} and not any(isinstance(m, PackedLinear) for m in model.modules()) \
        else (formats.pop() if len(formats) == 1 else "mixed")
    extra = dict(manifest_extra or {})
    clash = set(extra) & set(mf.REQUIRED)
    if clash:
        raise ValueError(f"manifest_extra may not set {sorted(clash)}")
    records = {name: _layer_record(model, name, fmt, params) for name, (fmt, _, params) in table.items()}
    _check_storable(records)
    if overall == "dense":
        with fused_experts(model):  # a plain HF folder holds MoE experts in transformers' own layout
            model.save_pretrained(directory, max_shard_size=SHARD_BYTES)
        shards, tied = [mf.shard_record(p) for p in sorted(directory.glob("*.safetensors"))], {}
    else:
        state, tied = _state(model, table)
        shards = _write_shards(directory, state)
        _write_config(model, directory, overall, records)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    mf.write(directory, {"format_version": mf.FORMAT_VERSION, "format": overall, "layers": records, "shards": shards,
                         "tensors": mf.tensors_of(directory, shards), "tied": tied, **extra})
    if "recipe" in extra:  # a compression run: every output folder gets its model card (README.md)
        from llmprune.model_cards import write_card

        write_card(directory)


def _write_config(model: nn.Module, directory: Path, overall: str, records: dict) -> None:
    """``config.json`` with ``quantization_config`` naming llmprune and the packed layers: transformers then loads
    the folder through ``llmprune.hf_quantizer`` (or, without llmprune, warns that it cannot) instead of filling the
    packed layers with random weights."""
    import json

    model.config.save_pretrained(directory)
    path = directory / "config.json"
    config = json.loads(path.read_text())
    config["quantization_config"] = {"quant_method": mf.QUANT_METHOD, "format": overall, "layers": records}
    floats = [t.dtype for t in model.parameters() if t.is_floating_point()]
    if floats:  # the dtype the tensors are stored in (save_pretrained does the same), not a stale config value
        config["dtype"] = str(floats[0]).removeprefix("torch.")
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _skeleton(directory: Path, manifest: dict):
    """The model with parameters on the meta device (buffers computed for real) and PackedLinear skeletons."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(directory)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config)
    return swap_in_packed_(model, manifest["layers"], directory / mf.FILENAME)


def swap_in_packed_(model: nn.Module, layers: dict, where, *, bias_dtype: torch.dtype | None = None) -> nn.Module:
    """Replace each Linear named in ``layers`` (manifest records) by a meta-device ``PackedLinear`` of its format,
    after splitting fused MoE experts (a packed MoE checkpoint stores its experts as the Linears that were
    compressed). Shared by ``llmprune.load`` and the transformers quantizer; ``where`` names the source in errors."""
    unfuse_experts_(model)
    for name, rec in layers.items():
        try:
            shape = tuple(get_weight(model.get_submodule(name)).shape)
        except AttributeError:
            raise CorruptCheckpoint(f"{where}: layer '{name}' is not a Linear of the model in config.json; re-save "
                                    f"the checkpoint") from None
        if shape != (rec["out_features"], rec["in_features"]):
            raise CorruptCheckpoint(f"{where}: layer '{name}' is {rec['out_features']}x{rec['in_features']} in the "
                                    f"manifest but {shape[0]}x{shape[1]} in config.json; re-save the checkpoint")
        set_module_(model, name, PackedLinear(rec["in_features"], rec["out_features"], rec["format"], rec["params"],
                                              bias=rec["bias"], device="meta",
                                              bias_dtype=bias_dtype or torch.float32))
    return model


def _read_state(directory: Path, manifest: dict, dtype: torch.dtype | None) -> dict:
    """All shard tensors; floating tensors outside the packed layers are cast to ``dtype`` when given."""
    from safetensors.torch import load_file

    state = {}
    for shard in manifest["shards"]:
        state.update(load_file(str(directory / shard["name"])))
    if dtype is not None:
        packed = {f"{name}." for name in manifest["layers"]}
        for key, value in state.items():
            is_packed = any(key.startswith(p) for p in packed) and not key.endswith(".bias")
            if value.is_floating_point() and not is_packed:
                state[key] = value.to(dtype)
    return state


def _assign(model: nn.Module, state: dict, manifest: dict, where: Path) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if unexpected:
        raise CorruptCheckpoint(f"{where}: tensor '{unexpected[0]}' does not belong to the model in config.json; "
                                f"re-save the checkpoint")
    for alias, target in manifest["tied"].items():
        owner, _, attr = alias.rpartition(".")
        src_owner, _, src_attr = target.rpartition(".")
        try:
            module, source = model.get_submodule(owner), getattr(model.get_submodule(src_owner), src_attr)
        except AttributeError:
            raise CorruptCheckpoint(f"{where}: tied entry '{alias}' -> '{target}' names no tensor of the model; "
                                    f"re-save the checkpoint") from None
        if alias not in missing:
            raise CorruptCheckpoint(f"{where}: tied entry '{alias}' names no tensor of the model; re-save the "
                                    f"checkpoint")
        setattr(module, attr, source)
    left = [k for k in missing if k not in manifest["tied"]]
    left += [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta and n not in left]
    if left:
        raise CorruptCheckpoint(f"{where}: tensor '{left[0]}' is missing from the checkpoint; re-save it")


def _check_config_matches(directory: Path, manifest: dict) -> None:
    """config.json's packed-layer records (what transformers loads) must be the manifest's (what this loads)."""
    marker = mf.config_marker(directory)
    if marker is None and manifest["format"] != "dense" and (directory / "config.json").is_file():
        raise CorruptCheckpoint(f"{directory / 'config.json'}: no llmprune quantization_config, so transformers "
                                f"would load the packed layers as random weights (edited by hand?); restore "
                                f"config.json from a copy or run llmprune compress again")
    if marker is not None and marker.get("layers") != manifest["layers"]:
        raise CorruptCheckpoint(f"{directory / 'config.json'}: quantization_config's layers differ from "
                                f"{mf.FILENAME}'s (edited by hand?); re-save the checkpoint")


def _mark_packed(model: nn.Module, manifest: dict) -> None:
    """What transformers' loader sets through ``hf_quantizer``, so that a model from either loader behaves the same:
    ``save_pretrained`` refused with the fix, ``dequantize()`` available."""
    from .hf_quantizer import LlmpruneConfig, LlmpruneHfQuantizer

    config = LlmpruneConfig(manifest["layers"], manifest["format"])
    model.config.quantization_config = config
    model.hf_quantizer = LlmpruneHfQuantizer(config)
    model.is_quantized, model.quantization_method = True, config.quant_method


def load(path, *, device="cpu", dtype: torch.dtype | None = None):
    """Validate, then rebuild the model with packed modules: returns ``(model, tokenizer or None, manifest)``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = Path(path)
    if not directory.is_dir():
        raise UserInputError(f"{directory}: no such folder; give the --output folder of 'llmprune compress'")
    if not (directory / mf.FILENAME).is_file():
        raise UserInputError(f"{directory}: no {mf.FILENAME} here, so it is not an llmprune checkpoint; give the "
                             f"--output folder of 'llmprune compress'")
    manifest = mf.validate(directory)
    _check_config_matches(directory, manifest)
    if manifest["format"] == "dense":
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype or "auto")
    else:
        model = _skeleton(directory, manifest)
        _assign(model, _read_state(directory, manifest, dtype), manifest, directory / mf.FILENAME)
        _mark_packed(model, manifest)
        if dtype is not None:
            model.config.dtype = dtype  # as from_pretrained(dtype=...) records it (a save writes it to config.json)
    has_tokenizer = any((directory / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
    tokenizer = AutoTokenizer.from_pretrained(directory) if has_tokenizer else None
    return model.to(torch.device(device)).eval(), tokenizer, manifest
