"""``llmprune.json``: the manifest of a saved checkpoint, and its validation before anything is loaded.

Why validate first: a flipped byte, a truncated shard or a hand-edited manifest must give a one-line
``CorruptCheckpoint`` naming the file, never garbage outputs or a crash deep inside torch. The manifest records every
shard's size and sha256, every tensor's shard/shape/dtype, and every packed layer's format and parameters; layer
tensors are checked against the format's ``tensor_specs``. Tensor headers are read with safetensors' own parser (no
pickle anywhere).

Layout (``format_version`` 1)::

    {"format_version": 1, "format": "int4" | "dense" | "mixed",
     "layers":  {name: {"format", "in_features", "out_features", "bias", "params": {...}}},
     "shards":  [{"name": "model.safetensors", "bytes": int, "sha256": hex}],
     "tensors": {key: {"shard", "shape", "dtype"}},
     "tied":    {dropped_key: kept_key},
     ...manifest_extra: recipe, calibration, report, timings, versions, command}

``format == "dense"`` means a plain Hugging Face folder (``AutoModelForCausalLM.from_pretrained`` loads it).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .errors import CorruptCheckpoint
from .formats import dtype_name, get_format

FORMAT_VERSION = 1
FILENAME = "llmprune.json"
QUANT_METHOD = "llmprune"  # config.json's quantization_config.quant_method of a packed folder (llmprune.hf_quantizer)
REQUIRED = ("format_version", "format", "layers", "shards", "tensors", "tied")
_ST_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64", "U8": "uint8", "I8": "int8",
              "I16": "int16", "I32": "int32", "I64": "int64", "BOOL": "bool"}


def sha256(path: Path, on_chunk=None) -> str:
    """The file's sha256, read in 4 MiB chunks (``on_chunk(n_bytes)`` after each: a progress bar)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
            if on_chunk is not None:
                on_chunk(len(chunk))
    return digest.hexdigest()


def shard_record(path: Path) -> dict:
    return {"name": path.name, "bytes": path.stat().st_size, "sha256": sha256(path)}


def read_headers(path: Path) -> dict[str, dict]:
    """``{key: {"shape", "dtype"}}`` of one safetensors file, from its header only."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return {key: _header_entry(handle.get_slice(key)) for key in handle.keys()}
    except Exception as exc:  # safetensors raises its own SafetensorError for malformed headers
        raise CorruptCheckpoint(f"{path}: not a readable safetensors file ({exc}); re-save the checkpoint") from None


def _header_entry(slice_) -> dict:
    code = slice_.get_dtype()
    return {"shape": list(slice_.get_shape()), "dtype": _ST_DTYPES.get(code, code)}


def tensors_of(directory: Path, shards: list[dict]) -> dict[str, dict]:
    """The ``tensors`` map for shards just written."""
    table = {}
    for shard in shards:
        for key, entry in read_headers(directory / shard["name"]).items():
            table[key] = {"shard": shard["name"], **entry}
    return table


def write(directory: Path, manifest: dict) -> Path:
    path = Path(directory) / FILENAME
    path.write_text(json.dumps(manifest, indent=1, default=_jsonable) + "\n")
    return path


def _jsonable(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "is_floating_point"):
        return dtype_name(value)
    return str(value)


def read_if_any(directory) -> dict | None:
    """The folder's manifest as written, or None when it has none (or an unreadable one): for inputs and caches,
    which need not be llmprune checkpoints (``read`` checks one that must be)."""
    try:
        data = json.loads((Path(directory) / FILENAME).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read(directory: Path) -> dict:
    """Parse the manifest and check its required keys and version (no shard access)."""
    path = Path(directory) / FILENAME
    if not path.is_file():
        raise CorruptCheckpoint(f"{path}: manifest missing; this folder is not an llmprune checkpoint")
    try:
        manifest = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptCheckpoint(f"{path}: not valid JSON ({exc.__class__.__name__}); re-save the checkpoint") from None
    missing = [key for key in REQUIRED if not isinstance(manifest, dict) or key not in manifest]
    if missing:
        raise CorruptCheckpoint(f"{path}: missing key(s) {', '.join(missing)}; re-save the checkpoint")
    if manifest["format_version"] != FORMAT_VERSION:
        raise CorruptCheckpoint(f"{path}: format_version {manifest['format_version']!r} is not {FORMAT_VERSION}; "
                                f"use the llmprune version that wrote it")
    return manifest


def quant_method(quantization_config) -> str | None:
    """The ``quant_method`` of a ``quantization_config``: config.json's dict, or transformers' config object."""
    if isinstance(quantization_config, dict):
        return quantization_config.get("quant_method")
    return getattr(quantization_config, "quant_method", None)


def is_ours(quantization_config) -> bool:
    """Whether a ``quantization_config`` is llmprune's."""
    return quant_method(quantization_config) == QUANT_METHOD


def config_marker(directory: Path) -> dict | None:
    """config.json's ``quantization_config`` when it is llmprune's (a packed folder), else None (no or unreadable
    config.json: the loaders report that themselves)."""
    try:
        config = json.loads((Path(directory) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    quant = config.get("quantization_config") if isinstance(config, dict) else None
    return quant if isinstance(quant, dict) and is_ours(quant) else None


def shard_headers(files) -> dict[str, dict]:
    """``{key: {"shape", "dtype"}}`` over the given safetensors files (headers only)."""
    return {key: entry for path in files for key, entry in read_headers(Path(path)).items()}


def validate(directory: Path) -> dict:
    """Check shards (presence, size, sha256), tensor headers and layer specs; returns the manifest."""
    directory = Path(directory)
    manifest = read(directory)
    where = directory / FILENAME
    try:
        headers = {s["name"]: _check_shard(directory, s) for s in manifest["shards"]}
        _check_tensors(directory, manifest, headers)
        if manifest["format"] != "dense":
            check_layer_records(where, manifest["layers"])
            check_layers(where, manifest["layers"], manifest["tensors"])
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, CorruptCheckpoint):
            raise
        raise CorruptCheckpoint(f"{where}: malformed entry ({exc.__class__.__name__}: {exc}); re-save the "
                                f"checkpoint") from None
    return manifest


def _check_shard(directory: Path, shard: dict) -> dict:
    path = directory / shard["name"]
    if Path(shard["name"]).name != shard["name"] or not path.is_file():
        raise CorruptCheckpoint(f"{path}: shard listed in {FILENAME} is missing; copy the whole checkpoint folder")
    size = path.stat().st_size
    if size != shard["bytes"]:
        raise CorruptCheckpoint(f"{path}: {size} bytes, the manifest says {shard['bytes']} (truncated or replaced); "
                                f"copy the checkpoint again")
    if sha256(path) != shard["sha256"]:
        raise CorruptCheckpoint(f"{path}: sha256 does not match the manifest (the file is corrupted); copy the "
                                f"checkpoint again")
    return read_headers(path)


def _check_tensors(directory: Path, manifest: dict, headers: dict[str, dict]) -> None:
    listed = manifest["tensors"]
    for key, record in listed.items():
        shard = directory / record["shard"]
        entry = headers.get(record["shard"], {}).get(key)
        if entry is None:
            raise CorruptCheckpoint(f"{shard}: tensor '{key}' listed in {FILENAME} is missing; re-save the checkpoint")
        if entry["shape"] != list(record["shape"]) or entry["dtype"] != record["dtype"]:
            raise CorruptCheckpoint(f"{shard}: tensor '{key}' is {entry['dtype']}{entry['shape']}, the manifest says "
                                    f"{record['dtype']}{list(record['shape'])}; re-save the checkpoint")
    for name, keys in headers.items():
        extra = sorted(set(keys) - set(listed))
        if extra:
            raise CorruptCheckpoint(f"{directory / name}: tensor '{extra[0]}' is not in {FILENAME}; re-save the "
                                    f"checkpoint")


RECORD_FIELDS = {"format": str, "in_features": int, "out_features": int, "bias": bool, "params": dict}


def check_layer_records(where, layers) -> None:
    """Each packed layer record has its fields with the right types and a known format (a hand-edited
    ``quantization_config`` in config.json fails here in one line, not deep inside a loader)."""
    if not isinstance(layers, dict) or not layers:
        raise CorruptCheckpoint(f"{where}: 'layers' must map each packed layer's name to its record; re-save the "
                                f"checkpoint")
    for name, rec in layers.items():
        if not isinstance(rec, dict) or any(not isinstance(rec.get(k), t) for k, t in RECORD_FIELDS.items()):
            raise CorruptCheckpoint(f"{where}: layer '{name}' needs {', '.join(RECORD_FIELDS)}; re-save the "
                                    f"checkpoint")
        try:
            get_format(rec["format"])
        except ValueError:
            raise CorruptCheckpoint(f"{where}: layer '{name}' has unknown format {rec['format']!r}; re-save the "
                                    f"checkpoint") from None


def check_layers(where, layers: dict, tensors: dict[str, dict]) -> None:
    """Layer records (checked by ``check_layer_records`` first) against the tensor table ``{key: {"shape",
    "dtype"}}`` (the manifest's, or the shards' headers): every packed tensor a record implies is there with its shape
    and dtype, and the bias exactly when the record says so."""
    for name, layer in layers.items():
        has_bias = f"{name}.bias" in tensors
        if bool(layer["bias"]) != has_bias:
            raise CorruptCheckpoint(f"{where}: layer '{name}' says bias={layer['bias']} but the checkpoint "
                                    f"{'has' if has_bias else 'has no'} {name}.bias; re-save the checkpoint")
        specs = get_format(layer["format"]).tensor_specs(layer["out_features"], layer["in_features"],
                                                         **layer["params"])
        for tensor, spec in specs.items():
            record = tensors.get(f"{name}.{tensor}")
            want = spec.to_dict()
            if record is None or list(record["shape"]) != want["shape"] or record["dtype"] != want["dtype"]:
                raise CorruptCheckpoint(f"{where}: layer '{name}' ({layer['format']} {layer['params']}) needs "
                                        f"{tensor} {want['dtype']}{want['shape']}, the checkpoint has "
                                        f"{record and (record['dtype'], record['shape'])}; re-save the checkpoint")
