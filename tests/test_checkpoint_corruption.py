"""Corrupted checkpoints give one-line CorruptCheckpoint errors naming the file; saves are atomic."""
from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file, save_file

from llmprune import atomic, checkpoint
from llmprune import manifest as mf
from llmprune.errors import CorruptCheckpoint, UserInputError
from tests.packed_fixtures import pack_model_
from tests.tiny_models import tiny_model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model, _ = tiny_model("llama")
    layers = pack_model_(model, "int4")
    return checkpoint.save(model, tmp_path_factory.mktemp("ck") / "out", layers=layers)


@pytest.fixture
def ck(saved, tmp_path):
    import shutil

    return shutil.copytree(saved, tmp_path / "copy")


def _fails(directory, fragment: str, file: str):
    with pytest.raises(CorruptCheckpoint) as info:
        checkpoint.load(directory)
    message = str(info.value)
    assert "\n" not in message and str(directory / file) in message and fragment in message, message


def _edit_manifest(directory, change):
    data = json.loads((directory / "llmprune.json").read_text())
    change(data)
    (directory / "llmprune.json").write_text(json.dumps(data))


def test_corruption_flipped_byte(ck):
    shard = ck / "model.safetensors"
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    shard.write_bytes(bytes(raw))
    _fails(ck, "sha256 does not match", "model.safetensors")


def test_corruption_truncated_shard(ck):
    shard = ck / "model.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    _fails(ck, "truncated", "model.safetensors")


def test_corruption_missing_shard(ck):
    (ck / "model.safetensors").unlink()
    _fails(ck, "missing", "model.safetensors")


def test_corruption_dropped_tensor_with_consistent_hashes(ck):
    shard = ck / "model.safetensors"
    tensors = load_file(str(shard))
    del tensors["model.layers.1.mlp.down_proj.scales"]
    save_file(tensors, str(shard), metadata={"format": "pt"})
    _edit_manifest(ck, lambda d: d["shards"][0].update(mf.shard_record(shard)))
    _fails(ck, "'model.layers.1.mlp.down_proj.scales' listed in llmprune.json is missing", "model.safetensors")


def test_corruption_manifest_edited_params(ck):
    _edit_manifest(ck, lambda d: d["layers"]["model.layers.0.self_attn.q_proj"]["params"].update(group=32))
    _fails(ck, "layer 'model.layers.0.self_attn.q_proj'", "llmprune.json")


def test_corruption_manifest_edited_shape(ck):
    _edit_manifest(ck, lambda d: d["tensors"]["model.norm.weight"].update(shape=[65]))
    _fails(ck, "'model.norm.weight'", "model.safetensors")


def test_corruption_manifest_unknown_format(ck):
    _edit_manifest(ck, lambda d: d["layers"]["model.layers.0.self_attn.q_proj"].update(format="int5"))
    _fails(ck, "unknown format 'int5'", "llmprune.json")


def test_corruption_manifest_not_json(ck):
    (ck / "llmprune.json").write_text("{not json")
    _fails(ck, "not valid JSON", "llmprune.json")


def test_corruption_manifest_missing_key(ck):
    _edit_manifest(ck, lambda d: d.pop("shards"))
    _fails(ck, "missing key(s) shards", "llmprune.json")


def test_load_plain_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserInputError, match="not an llmprune checkpoint"):
        checkpoint.load(tmp_path)
    with pytest.raises(UserInputError, match="nope: no such folder"):
        checkpoint.load(tmp_path / "nope")


def test_nonempty_output_without_force_is_untouched(saved, tmp_path):
    target = tmp_path / "busy"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(UserInputError, match="folder is not empty; pass --force"):
        atomic.check_output_dir(target, force=False)
    model, _ = tiny_model("llama")
    with pytest.raises(UserInputError):
        checkpoint.save(model, target, layers=pack_model_(model, "int4"))
    assert [p.name for p in target.iterdir()] == ["keep.txt"]


def test_force_replaces_folder(tmp_path):
    target = tmp_path / "busy"
    target.mkdir()
    (target / "old.txt").write_text("old")
    model, _ = tiny_model("llama")
    checkpoint.save(model, target, layers=pack_model_(model, "int4"), force=True)
    assert not (target / "old.txt").exists() and (target / "llmprune.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["busy"]  # no temp or old folders left behind


@pytest.mark.parametrize("force", [False, True])
def test_failure_mid_save_leaves_no_partial_output(tmp_path, monkeypatch, force):
    target = tmp_path / "out"
    if force:
        target.mkdir()
        (target / "previous.txt").write_text("previous run")
    model, _ = tiny_model("llama")
    layers = pack_model_(model, "int4")

    def boom(directory, manifest):
        raise RuntimeError("disk full")

    monkeypatch.setattr(mf, "write", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        checkpoint.save(model, target, layers=layers, force=force)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == (["out"] if force else [])
    if force:
        assert [p.name for p in target.iterdir()] == ["previous.txt"]


@pytest.mark.parametrize("change, fragment", [
    (lambda d: d["layers"]["model.layers.0.mlp.up_proj"].update(in_features=128), "in the manifest but"),
    (lambda d: d["tied"].update({"lm_head.weight": "model.embed_tokenz.weight"}), "names no tensor of the model"),
    (lambda d: d["tied"].update({"lm_headd.weight": "model.embed_tokens.weight"}), "names no tensor of the model"),
])
def test_corruption_manifest_edits_that_no_shape_check_sees(tmp_path, change, fragment):
    """Edits the tensor table cannot catch (group_sparse_int4's tensors do not imply in_features): layer shapes
    against config.json, layer names, tied aliases."""
    model, _ = tiny_model("llama")
    directory = checkpoint.save(model, tmp_path / "gqsa", layers=pack_model_(model, "group_sparse_int4"))
    _edit_manifest(directory, change)
    config = json.loads((directory / "config.json").read_text())  # config.json edited alike: only the model can tell
    config["quantization_config"]["layers"] = json.loads((directory / "llmprune.json").read_text())["layers"]
    (directory / "config.json").write_text(json.dumps(config))
    _fails(directory, fragment, "llmprune.json")


def test_failed_final_rename_puts_the_previous_output_back(tmp_path, monkeypatch):
    target = tmp_path / "out"
    target.mkdir()
    (target / "previous.txt").write_text("previous run")
    real_rename = type(target).rename

    def rename(self, dest):
        if self.name.startswith(".out.tmp-"):
            raise OSError("cross-device link")
        return real_rename(self, dest)

    monkeypatch.setattr(type(target), "rename", rename)
    with pytest.raises(UserInputError, match=r"could not be replaced \(cross-device link\); the previous output"):
        with atomic.atomic_dir(target, force=True) as tmp:
            (tmp / "new.txt").write_text("new run")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert [p.name for p in target.iterdir()] == ["previous.txt"]


@pytest.mark.parametrize("where, words", [("file/out", "is a file, not a folder"),
                                          ("file/deeper/out", "is a file, not a folder")])
def test_output_under_a_file_fails_before_any_work(tmp_path, where, words):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserInputError, match=words):
        atomic.check_output_dir(tmp_path / where)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # the write probe left nothing


def test_output_where_nothing_can_be_written_fails_before_any_work():
    """/proc takes no new folders, even from root (a chmod-ed folder would not stop root)."""
    with pytest.raises(UserInputError, match="cannot write in /proc"):
        atomic.check_output_dir("/proc/llmprune-test-out")


def test_corruption_config_layers_differ_from_the_manifest(ck):
    """config.json's records are what transformers loads; llmprune.load refuses a folder where they differ."""
    config = json.loads((ck / "config.json").read_text())
    config["quantization_config"]["layers"].pop("model.layers.0.self_attn.q_proj")
    (ck / "config.json").write_text(json.dumps(config))
    _fails(ck, "quantization_config's layers differ from llmprune.json's", "config.json")


@pytest.mark.parametrize("value", [None, "drop"])
def test_corruption_config_without_the_quantization_config(ck, value):
    """A packed folder whose config.json lost its marker would load as random weights through transformers."""
    config = json.loads((ck / "config.json").read_text())
    if value == "drop":
        del config["quantization_config"]
    else:
        config["quantization_config"] = value
    (ck / "config.json").write_text(json.dumps(config))
    _fails(ck, "no llmprune quantization_config", "config.json")
