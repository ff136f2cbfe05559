"""``llmprune push``: the dry run, the Hub calls made (HfApi mocked: the Hub is unreachable here), and refusals."""
from __future__ import annotations

import os
from pathlib import Path
from unittest import mock

import pytest
from huggingface_hub import ModelCard

from llmprune.errors import CorruptCheckpoint, UserInputError
from llmprune.hub import IGNORE, PushFailed, push
from tests.publish_fixtures import packed_checkpoint


@pytest.fixture
def folder(tmp_path):
    out = packed_checkpoint(tmp_path / "out")
    (out / ".cache").mkdir()
    (out / ".cache" / "junk").write_text("x")
    return out


def _listing(directory: Path) -> list[tuple[str, int]]:
    """Independent walk: every non-hidden file with its size."""
    found = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if not name.startswith("."):
                path = Path(root, name)
                found.append((path.relative_to(directory).as_posix(), path.stat().st_size))
    return sorted(found)


def test_push_dry_run_lists_files_prints_card_writes_nothing(folder, capsys, monkeypatch):
    from llmprune.cli.main import main

    monkeypatch.setenv("HF_TOKEN", "hf_secret_never_printed")
    before = sorted(p.as_posix() for p in folder.rglob("*"))
    assert main(["push", str(folder), "--repo-id", "alice/tiny", "--dry-run", "--private"]) == 0
    out = capsys.readouterr().out
    expected = [(name, size) for name, size in _listing(folder) if name != "README.md"]  # compress's card: re-rendered
    assert f"would upload {len(expected) + 1} files" in out and "to alice/tiny (private):" in out
    for name, size in expected:
        assert f"  {name}  ({size / 1e6:.2f} MB)" in out
    assert "README.md  (generated model card)" in out and ".cache" not in out
    card = out.split("--- model card (README.md) ---", 1)[1].strip()
    assert ModelCard(card).data.library_name == "llmprune" and 'snapshot_download("alice/tiny")' in card
    assert "hf_secret_never_printed" not in out
    assert sorted(p.as_posix() for p in folder.rglob("*")) == before


def test_push_calls_create_repo_branch_and_upload_folder(folder):
    api = mock.Mock()
    api.create_repo.return_value = "https://huggingface.co/alice/tiny"
    plan = push(folder, "alice/tiny", private=True, revision="v1", api=api)
    assert [c[0] for c in api.mock_calls] == ["create_repo", "create_branch", "upload_folder"]
    api.create_repo.assert_called_once_with("alice/tiny", private=True, exist_ok=True)
    api.create_branch.assert_called_once_with("alice/tiny", branch="v1", exist_ok=True)
    kwargs = api.upload_folder.call_args.kwargs
    assert kwargs["repo_id"] == "alice/tiny" and Path(kwargs["folder_path"]) == folder
    assert kwargs["revision"] == "v1" and kwargs["ignore_patterns"] == IGNORE
    assert plan.url == "https://huggingface.co/alice/tiny"
    card = ModelCard.load(folder / "README.md")  # written before the upload, so it is part of it
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert 'snapshot_download("alice/tiny")' in card.text  # compress's card re-rendered with the repo id


def test_push_without_revision_skips_branch_and_keeps_existing_card(folder):
    (folder / "README.md").write_text("---\nlibrary_name: llmprune\n---\nmy own card\n")
    api = mock.Mock()
    push(folder, "alice/tiny", api=api)
    api.create_branch.assert_not_called()
    assert api.upload_folder.call_args.kwargs["revision"] is None
    assert (folder / "README.md").read_text().endswith("my own card\n")


def test_push_refuses_folder_without_manifest(tmp_path):
    from tests.tiny_models import save_tiny

    plain = save_tiny(tmp_path / "hf", "llama")
    api = mock.Mock()
    with pytest.raises(CorruptCheckpoint, match=r"no llmprune.json manifest"):
        push(plain, "alice/tiny", api=api)
    assert api.mock_calls == []


def test_push_refuses_missing_or_corrupted_shard(folder):
    api = mock.Mock()
    shard = folder / "model.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpoint, match="sha256 does not match"):
        push(folder, "alice/tiny", api=api)
    shard.unlink()
    with pytest.raises(CorruptCheckpoint, match="shard listed in llmprune.json is missing"):
        push(folder, "alice/tiny", dry_run=True)
    assert api.mock_calls == []


def test_push_cli_refusal_is_one_line_exit_2(folder, capsys):
    from llmprune.cli.main import main

    (folder / "model.safetensors").unlink()
    assert main(["push", str(folder), "--repo-id", "alice/tiny", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "model.safetensors" in err[0]


@pytest.mark.parametrize("repo_id", ["alice", "alice/bob/carol", "alice/bad name", "/tiny", ""])
def test_push_bad_repo_id(folder, repo_id):
    with pytest.raises(UserInputError, match="write USER/NAME"):
        push(folder, repo_id, dry_run=True)


def test_push_with_hf_hub_offline_names_the_variable(folder, capsys, monkeypatch):
    """The suite runs with HF_HUB_OFFLINE=1: a real HfApi refuses to connect, and the fix is to unset it."""
    from llmprune.cli.main import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["push", str(folder), "--repo-id", "alice/tiny"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: HF_HUB_OFFLINE is set, so nothing can be pushed; unset it (or plan with --dry-run)"], err


@pytest.mark.parametrize("revision", ["a b", "x..y", "-", "main~1", "a/"])
def test_push_bad_revision(folder, revision):
    with pytest.raises(UserInputError, match="not a branch name"):
        push(folder, "alice/tiny", revision=revision, dry_run=True)


def test_push_auth_and_network_errors_are_one_line(folder):
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    def refused(status):
        response = httpx2.Response(status, request=httpx2.Request("POST", "https://huggingface.co/api/repos/create"))
        return HfHubHTTPError(f"{status} error", response=response)

    card = folder / "README.md"
    before = card.read_text() if card.exists() else None
    api = mock.Mock()
    api.create_repo.side_effect = refused(401)
    with pytest.raises(UserInputError, match=r"refused the token \(HTTP 401\)"):
        push(folder, "alice/tiny", api=api)
    api.create_repo.side_effect = refused(500)
    with pytest.raises(PushFailed, match="HTTP 500"):
        push(folder, "alice/tiny", api=api)
    api.create_repo.side_effect = ConnectionError("unreachable")
    with pytest.raises(PushFailed, match="unreachable"):
        push(folder, "alice/tiny", api=api)
    api.upload_folder.assert_not_called()
    assert (card.read_text() if card.exists() else None) == before  # a failed push leaves the folder as it was


def test_push_to_an_unreachable_hub_is_one_line(folder, capsys, monkeypatch):
    """A real HfApi against a port nobody listens on: huggingface_hub's HTTP client raises its own transport error
    (neither OSError nor ConnectionError), which must still come out as one line, exit 2, the folder untouched."""
    import huggingface_hub
    from huggingface_hub import constants

    from llmprune.cli.main import main

    card = folder / "README.md"
    before = card.read_text() if card.exists() else None
    monkeypatch.setattr(constants, "is_offline_mode", lambda: False)  # the suite runs with HF_HUB_OFFLINE=1
    real = huggingface_hub.HfApi
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda *a, **k: real(endpoint="http://127.0.0.1:9", token="hf_x"))
    assert main(["push", str(folder), "--repo-id", "alice/tiny"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: create_repo: the Hub is unreachable"), err
    assert (card.read_text() if card.exists() else None) == before
