"""``resolve(spec)``: turn what the user typed into a model and its tokenizer.

Accepted, in this order: a built-in alias (``smollm2-135m``), a local HF folder (``config.json`` + weights), a local
``.gguf`` file (transformers' GGUF reader, dequantized), or a Hugging Face Hub id (``org/name``; the local HF cache
first, then the Hub when it is reachable). Anything else is a one-line ``ModelNotFound`` naming the accepted forms.

Models come back on CPU in eval mode. Calibration runs with ``use_cache=False`` passed per call (no decoding happens);
the config's ``use_cache`` is left as shipped so that saved checkpoints generate as usual.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import settings
from ..errors import ModelNotFound, UserInputError
from .aliases import ALIASES, ensure_alias

ACCEPTED = "give an HF folder, a .gguf file, a Hub id when online, or 'smollm2-135m'"
_WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin")


@dataclass
class LoadedModel:
    """A model, its tokenizer, and where they came from: source = {"spec", "kind", "path", ...}."""

    model: torch.nn.Module
    tokenizer: object
    source: dict = field(default_factory=dict)


def is_hf_folder(path) -> bool:
    """True for a folder holding a transformers checkpoint: ``config.json`` plus safetensors or bin weights."""
    path = Path(path)
    if not (path.is_dir() and (path / "config.json").is_file()):
        return False
    return any(next(path.glob(pattern), None) is not None for pattern in _WEIGHT_PATTERNS)


def _prepare(model: torch.nn.Module) -> torch.nn.Module:
    """Eval mode. The KV cache is disabled per call (the engine passes ``use_cache=False``), not in the config: a
    checkpoint saved from this model must keep generating with a cache as shipped."""
    return model.eval()


class _NoTokenizer(ValueError):
    """The tokenizer could not be loaded (told apart from the weights: the fix differs)."""


def _load_tokenizer(location: str, **kwargs):
    """A tokenizer that turns text into tokens, or ``_NoTokenizer`` saying why not."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
    except (OSError, ValueError, TypeError) as exc:
        raise _NoTokenizer(_first_line(exc)) from exc
    if not tokenizer("The quick brown fox.", add_special_tokens=False)["input_ids"]:
        raise _NoTokenizer("its tokenizer encodes text to no tokens; transformers builds an empty one when the "
                           "folder has no tokenizer files")
    return tokenizer


def _load_pretrained(location: str, dtype, **kwargs):
    """The tokenizer first: it is quick, and a folder without one fails before its weights are read."""
    from transformers import AutoModelForCausalLM

    tokenizer = _load_tokenizer(location, **{k: v for k, v in kwargs.items() if k != "quantization_config"})
    model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype, **kwargs)
    return _prepare(model), tokenizer


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_gguf(path: Path, dtype=torch.float32):
    """Load a ``.gguf`` file with transformers, dequantized into plain ``nn.Linear`` weights.

    The GGUF quantizer marker is dropped so that ``save_pretrained`` writes a plain checkpoint (transformers refuses
    to serialize a model "quantized with gguf" otherwise); the weights are already dense at this point.
    """
    from transformers import GgufConfig

    try:
        model, tokenizer = _load_pretrained(str(path.parent), dtype, gguf_file=path.name,
                                            quantization_config=GgufConfig(dequantize=True))
    except (OSError, ValueError, KeyError) as exc:  # not GGUF, truncated, or an architecture transformers lacks
        raise ModelNotFound(f"'{path}' could not be loaded as a GGUF model ({_first_line(exc)}); {ACCEPTED}") from None
    model.hf_quantizer = None
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    return model, tokenizer


def refuse_packed(path: Path) -> None:
    """A packed llmprune folder holds codes, not weights to compress: name the model it came from instead."""
    from .. import manifest as mf

    # no manifest: a plain HF folder, or a packed one copied without it (its config.json still says so)
    manifest = mf.read_if_any(path) or {}
    fmt = manifest.get("format")
    marker = mf.config_marker(path)
    if fmt in (None, "dense") and marker is not None:
        fmt = marker.get("format", "packed")  # a packed folder without its manifest (copied, or saved by hand)
    if fmt in (None, "dense"):
        return
    recorded = manifest.get("model") if isinstance(manifest.get("model"), dict) else {}
    # a folder by its resolved path (the spec was relative to where that run ran), an alias or Hub id by name
    source = recorded.get("path") if recorded.get("kind") in ("folder", "gguf") else recorded.get("spec")
    origin = f"compress the model it was made from ('{source}')" if source else "compress the original model"
    raise ModelNotFound(f"'{path}' is an llmprune checkpoint stored packed ({fmt}), already compressed; {origin}, or "
                        f"save with --format dense to compress further")


def refuse_quantized(config, name: str) -> None:
    """A checkpoint quantized by another tool (compressed-tensors, GPTQ, AWQ, bitsandbytes...) loads as that tool's
    modules, with no float weight to compress: one line naming it, not an AttributeError deep in the plan.
    llmprune's own packed folders are ``refuse_packed``'s."""
    from .. import manifest as mf

    quant = getattr(config, "quantization_config", None)
    if quant is None or mf.is_ours(quant):
        return
    method = mf.quant_method(quant)
    raise UserInputError(f"'{name}' is already quantized ({method or type(quant).__name__}); compress the float "
                         f"model it was made from (for an llmprune export: the folder without .compressed-tensors)")


def load_folder(path: Path, dtype):
    """Model (eval mode) and tokenizer of an HF folder, with one-line errors for a missing tokenizer, damaged weights
    or anything else transformers refuses; packed llmprune folders load through the quantizer plug-in."""
    from safetensors import SafetensorError

    check_config_json(path)
    try:
        return _load_pretrained(str(path), dtype)
    except _NoTokenizer as exc:
        raise _tokenizer_error(path, exc) from None
    except SafetensorError as exc:
        raise ModelNotFound(f"the weights in '{path}' are damaged ({_first_line(exc)}); download or save the model "
                            f"again") from None
    except (OSError, ValueError) as exc:
        raise ModelNotFound(f"could not load the model in '{path}' ({_first_line(exc)}); {ACCEPTED}") from None
    except RuntimeError as exc:
        if "size mismatch" not in str(exc) and "mismatched_sizes" not in str(exc):
            raise
        raise ModelNotFound(f"the weights in '{path}' do not have the shapes its config.json gives; restore the "
                            f"model's own config.json or download the model again") from None


def check_config_json(path: Path) -> None:
    """A folder's config.json must be a JSON object: transformers otherwise fails on the tokenizer first, and its
    message would send the user after the wrong file."""
    import json

    try:
        parsed = json.loads((path / "config.json").read_text())
    except FileNotFoundError:
        return
    except (UnicodeDecodeError, ValueError) as exc:
        raise ModelNotFound(f"'{path / 'config.json'}' is not valid JSON ({_first_line(exc)}); restore the model's "
                            f"config.json") from None
    if not isinstance(parsed, dict):
        raise ModelNotFound(f"'{path / 'config.json'}' holds a JSON {type(parsed).__name__}, not an object; restore "
                            f"the model's config.json")


def check_tokenizer(path: Path) -> None:
    """An HF folder's tokenizer loads and encodes text, checked without its weights (``llmprune batch`` checks every
    model before its first cell); ``load_folder``'s error when not."""
    try:
        _load_tokenizer(str(path))
    except _NoTokenizer as exc:
        raise _tokenizer_error(path, exc) from None


def _tokenizer_error(path: Path, why: _NoTokenizer) -> ModelNotFound:
    return ModelNotFound(f"no usable tokenizer in '{path}' ({why}); copy the base model's tokenizer files "
                         f"(tokenizer.json, tokenizer_config.json) into it")


def _causes(exc: BaseException):
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


def _load_hub(spec: str, dtype, revision: str | None = None):
    pin = {} if revision is None else {"revision": revision}
    try:  # the local HF cache first: a downloaded model works offline
        return _load_pretrained(spec, dtype, local_files_only=True, **pin)
    except (OSError, ValueError):
        pass
    if settings.hub_offline() or not settings.hub_reachable():
        why = "HF_HUB_OFFLINE is set" if settings.hub_offline() else "the Hugging Face Hub is unreachable"
        raise ModelNotFound(f"model '{spec}' not found locally and {why} ({ACCEPTED})")
    try:
        return _load_pretrained(spec, dtype, **pin)
    except (OSError, ValueError) as exc:
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

        if any(isinstance(e, GatedRepoError) for e in _causes(exc)):
            raise ModelNotFound(f"model '{spec}' is gated on the Hub; log in with `hf auth login` after accepting "
                                f"its terms, or {ACCEPTED}") from None
        if any(isinstance(e, RepositoryNotFoundError) for e in _causes(exc)):
            raise ModelNotFound(f"model '{spec}' not found on the Hugging Face Hub ({ACCEPTED})") from None
        raise ModelNotFound(f"could not load '{spec}' from the Hub ({str(exc).splitlines()[0]}); {ACCEPTED}") from None


def looks_like_path(spec: str) -> bool:
    """Hub ids are ``name`` or ``org/name``; anything else with a separator, ``~`` or ``.gguf`` is a path, and so is
    ``dir/name`` when ``dir`` is a local folder (``out/sgpt42``, a mistyped output folder, is not a Hub id)."""
    return (spec.startswith(("/", ".", "~")) or spec.endswith(".gguf") or spec.count("/") > 1
            or "\\" in spec or spec.endswith("/") or ("/" in spec and Path(spec).parent.is_dir()))


def read_config(text: str):
    """The config of the model ``text`` names, read without its weights (checks before a long load); a name that
    cannot load fails here with ``resolve``'s one-line error. None when only loading can tell (a Hub model not in
    the local cache while online; a config transformers cannot read, which the load reports)."""
    path = Path(text).expanduser()
    if text in ALIASES and not path.exists():
        return _config(ensure_alias(text))
    if is_hf_folder(path):
        check_config_json(path)
        return _config(path)
    if path.is_file() and path.suffix.lower() == ".gguf":
        return _config(path.parent, gguf_file=path.name)
    if not path.exists() and not looks_like_path(text):
        config = _config(text, local_files_only=True)  # a Hub id in the local cache
        if config is not None or not settings.hub_offline():
            return config
    resolve(text)  # none of the loadable forms: resolve fails with its one-line ModelNotFound before any loading
    return None


def compressible_config(text: str):
    """``read_config`` of a model that can be compressed: an llmprune packed folder (``refuse_packed``) or another
    tool's quantized checkpoint (``refuse_quantized``) is refused from its files, before any loading."""
    path = Path(text).expanduser()
    if is_hf_folder(path):
        refuse_packed(path)
    config = read_config(text)
    refuse_quantized(config, text)
    return config


def _config(location, **kwargs):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(location, **kwargs)
    except (OSError, ValueError, KeyError, ImportError):
        return None


def resolve(spec, *, dtype=torch.float32, revision: str | None = None) -> LoadedModel:
    """Load the model named by ``spec`` (alias | HF folder | .gguf file | Hub id) on CPU, in eval mode.
    ``revision`` pins a Hub model's commit (``source["revision"]`` records the one loaded)."""
    text = str(spec).strip()
    if not text:
        raise ModelNotFound(f"no model given ({ACCEPTED})")
    path = Path(text).expanduser()
    if text in ALIASES and not path.exists():
        folder = ensure_alias(text)
        model, tokenizer = load_folder(folder, dtype)
        return LoadedModel(model, tokenizer, {"spec": text, "kind": "alias", "path": str(folder),
                                              "origin": ALIASES[text].package})
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelNotFound(f"model '{text}' is a file but not a .gguf file ({ACCEPTED})")
        model, tokenizer = load_gguf(path, dtype)
        return LoadedModel(model, tokenizer, {"spec": text, "kind": "gguf", "path": str(path.resolve())})
    if path.is_dir() and is_hf_folder(path):
        refuse_packed(path)
        model, tokenizer = load_folder(path, dtype)
        return LoadedModel(model, tokenizer, {"spec": text, "kind": "folder", "path": str(path.resolve())})
    if path.is_dir():
        raise ModelNotFound(f"folder '{text}' holds no HF checkpoint (config.json and *.safetensors); {ACCEPTED}")
    if looks_like_path(text):
        raise ModelNotFound(f"model path '{text}' does not exist ({ACCEPTED})")
    model, tokenizer = _load_hub(text, dtype, revision)
    commit = getattr(model.config, "_commit_hash", None) or revision
    return LoadedModel(model, tokenizer, {"spec": text, "kind": "hub", "path": text, "revision": commit})
