"""What identifies a batch cell's inputs, for ``llmprune batch``'s content-hash cache (evals/batch.py): a local
folder or .gguf contributes the sha256 of its files (``llmprune.model.fingerprint.file_sha256``, memoized: a 7B
checkpoint is hashed once per process), an alias its pinned package, a Hub id its name only; data the sha256 of the
files it reads."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path


def model_fingerprint(spec: str) -> dict:
    """What identifies a model's weights (module docstring)."""
    from llmprune.manifest import FILENAME
    from llmprune.model.aliases import ALIASES
    from llmprune.model.fingerprint import file_sha256

    path = Path(spec).expanduser()
    if path.exists():  # not an llmprune output's manifest: `llmprune eval` records its results there
        wanted = [p for p in (path.iterdir() if path.is_dir() else [path])
                  if p.suffix in {".safetensors", ".gguf", ".json"} and p.name != FILENAME]
        return {"files": {p.name: file_sha256(p) for p in sorted(wanted)}}
    if spec in ALIASES:
        return {"alias": spec, "package": ALIASES[spec].package}
    return {"hub": spec}


def data_fingerprint(name: str) -> dict:
    """sha256 of the local files a dataset name reads, or the name itself when it would come from the Hub."""
    from llmprune.data.sources import file_sha256
    from llmprune.settings import data_dir

    path = Path(name).expanduser()
    root = data_dir()
    local = path if path.exists() else (root / name.split(":")[0] if root is not None else None)
    return {name: file_sha256(local) if local is not None and local.exists() else "hub"}


def content_hash(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]
