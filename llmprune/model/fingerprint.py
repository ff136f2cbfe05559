"""The sha256 of the files a model was loaded from, recorded in the manifest.

Why: a manifest records the model's path, and the folder at that path can be re-saved with other weights (or the
alias's cache re-converted); ``--from-manifest`` would then compress another model and say nothing. The files that
decide the result are hashed: the config, the weights and the tokenizer (which decides the calibration tokens). A Hub
model is pinned by its commit instead."""
from __future__ import annotations

from pathlib import Path

PATTERNS = ("config.json", "*.safetensors", "*.bin", "*.gguf", "*.index.json", "tokenizer.json", "tokenizer.model",
            "tokenizer_config.json")
_MEMO: dict[tuple, str] = {}
_BAR_FROM = 1 << 30  # hashing this many bytes takes a second or more: show a bar


def model_files(source: dict, *, progress: bool = True) -> dict[str, str] | None:
    """``{file name: sha256}`` of a local model (``resolve``'s ``source``: folder, alias or .gguf); None for a Hub
    model."""
    if source.get("kind") not in ("folder", "alias", "gguf"):
        return None
    path = Path(source["path"])
    files = [path] if path.is_file() else sorted({f for p in PATTERNS for f in path.glob(p) if f.is_file()})
    return _hash_all(files, progress)


def changed_files(recorded: dict[str, str], current: dict[str, str]) -> list[str]:
    """Names of the files that differ, were added or are gone."""
    return sorted(name for name in recorded.keys() | current.keys() if recorded.get(name) != current.get(name))


def file_sha256(path: Path, on_chunk=None) -> str:
    """A file's sha256, memoized per process by path, size and mtime: a 7B checkpoint is hashed once, not once per
    batch cell and again for its manifest."""
    from ..manifest import sha256

    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _MEMO:
        _MEMO[key] = sha256(path, on_chunk)
    elif on_chunk is not None:
        on_chunk(stat.st_size)
    return _MEMO[key]


def _hash_all(files: list[Path], progress: bool) -> dict[str, str]:
    from tqdm import tqdm

    total = sum(f.stat().st_size for f in files)
    with tqdm(total=total, unit="B", unit_scale=True, desc="hashing the model files", leave=False,
              disable=not progress or total < _BAR_FROM) as bar:
        return {f.name: file_sha256(f, bar.update) for f in files}
