"""llmprune.model.fingerprint: the model files a manifest records, against hashlib read directly."""
from __future__ import annotations

import hashlib
import os

from llmprune.model.fingerprint import changed_files, model_files
from tests.tiny_models import save_tiny


def _direct(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_model_files_are_the_config_weights_and_tokenizer(tmp_path):
    folder = save_tiny(tmp_path / "tiny", "llama")
    (folder / "README.md").write_text("not part of the model")
    files = model_files({"kind": "folder", "path": str(folder)}, progress=False)
    expected = {p.name: _direct(p) for p in folder.iterdir()
                if p.name in {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}}
    assert files == expected and "model.safetensors" in files and "README.md" not in files
    assert model_files({"kind": "hub", "spec": "org/model", "path": "org/model"}) is None  # pinned by its commit


def test_a_rewritten_file_is_hashed_again_and_named(tmp_path):
    folder = save_tiny(tmp_path / "tiny", "llama")
    source = {"kind": "folder", "path": str(folder)}
    before = model_files(source, progress=False)
    shard = folder / "model.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1
    shard.write_bytes(bytes(data))
    os.utime(shard, ns=(0, shard.stat().st_mtime_ns + 1))  # a new mtime even on a coarse-clock filesystem
    (folder / "tokenizer_config.json").unlink()
    after = model_files(source, progress=False)
    assert after["model.safetensors"] == _direct(shard) != before["model.safetensors"]
    assert changed_files(before, after) == ["model.safetensors", "tokenizer_config.json"]
