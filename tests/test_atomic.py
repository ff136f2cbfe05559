"""Staged outputs (llmprune/atomic.py): several targets committed together, interrupts held back while they are."""
from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from llmprune import atomic
from llmprune.errors import UserInputError


def _previous(tmp_path, *names):
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / "previous.txt").write_text(name)
    return [tmp_path / name for name in names]


def _contents(tmp_path):
    return {p.name: sorted(c.name for c in p.iterdir()) for p in sorted(tmp_path.iterdir())}


def test_deferred_signals_deliver_ctrl_c_after_the_block():
    done = []
    with pytest.raises(KeyboardInterrupt):
        with atomic.deferred_signals():
            signal.raise_signal(signal.SIGINT)
            done.append("the block ran to its end")
    assert done == ["the block ran to its end"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_during_the_renames_still_commits_every_target(tmp_path, monkeypatch):
    """An interrupt arriving between the renames of the output and of its export: both end up new, nothing old or
    staged is left, and the KeyboardInterrupt comes afterwards (without deferral: one new, one old, a stray .old)."""
    out, export = _previous(tmp_path, "out", "out.export")
    real_rename = Path.rename

    def rename(self, dest):
        result = real_rename(self, dest)
        if ".tmp-" in self.name and Path(dest).name == "out":
            signal.raise_signal(signal.SIGINT)
        return result

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(KeyboardInterrupt), pytest.warns(UserWarning, match="after the output was complete"):
        with atomic.atomic_dirs([out, export], force=True) as (a, b):
            (a / "new.txt").write_text("new")
            (b / "new.txt").write_text("new")
    assert _contents(tmp_path) == {"out": ["new.txt"], "out.export": ["new.txt"]}


def test_a_failed_rename_puts_every_previous_target_back(tmp_path, monkeypatch):
    out, export = _previous(tmp_path, "out", "out.export")
    real_rename = Path.rename

    def rename(self, dest):
        if ".tmp-" in self.name and Path(dest).name == "out.export":
            raise OSError("cross-device link")
        return real_rename(self, dest)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(UserInputError, match=r"could not be replaced \(cross-device link\); the previous output"):
        with atomic.atomic_dirs([out, export], force=True) as (a, b):
            (a / "new.txt").write_text("new")
            (b / "new.txt").write_text("new")
    assert _contents(tmp_path) == {"out": ["previous.txt"], "out.export": ["previous.txt"]}


def test_a_failed_commit_under_ctrl_c_claims_nothing_and_removes_the_parents_it_made(tmp_path, monkeypatch):
    """Ctrl-C held back during renames that then fail: no "output is in place" warning (it is not), and the parent
    folders the run created are gone, as after any other failure."""
    real_rename = Path.rename

    def rename(self, dest):
        if ".tmp-" in self.name:
            signal.raise_signal(signal.SIGINT)
            raise OSError(28, "No space left on device", str(dest))
        return real_rename(self, dest)

    monkeypatch.setattr(Path, "rename", rename)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning would fail the test
        with pytest.raises(KeyboardInterrupt):
            with atomic.atomic_dir(tmp_path / "new" / "out") as staged:
                (staged / "f.txt").write_text("x")
    assert list(tmp_path.iterdir()) == []


def test_a_failure_while_staging_leaves_the_targets_and_no_staged_folder(tmp_path):
    out, export = _previous(tmp_path, "out", "out.export")
    with pytest.raises(RuntimeError):
        with atomic.atomic_dirs([out, export], force=True) as (a, _):
            (a / "half.safetensors").write_bytes(b"x" * 10)
            raise RuntimeError("disk full")
    assert _contents(tmp_path) == {"out": ["previous.txt"], "out.export": ["previous.txt"]}


def test_a_failure_removes_the_parent_folders_the_run_created_and_only_those(tmp_path):
    (tmp_path / "runs" / "keep").mkdir(parents=True)
    with pytest.raises(RuntimeError):
        with atomic.atomic_dirs([tmp_path / "runs" / "a" / "b" / "out", tmp_path / "runs" / "out.x"]) as (a, _):
            (a / "half.bin").write_bytes(b"x")
            raise RuntimeError("disk full")
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["keep"]


def test_staged_files_get_the_permissions_of_a_plain_open(tmp_path):
    """Libraries that write through mkstemp leave 0600; the committed files are readable as any other file."""
    with atomic.atomic_dir(tmp_path / "out") as tmp:
        (tmp / "plain.json").write_text("{}")
        secret = tmp / "model.safetensors"
        secret.write_bytes(b"weights")
        secret.chmod(0o600)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "out").iterdir()}
    assert modes["model.safetensors"] == modes["plain.json"] != 0o600, modes


@pytest.mark.parametrize("where", ["cwd", "cwd_parent", "input", "input_parent"])
def test_force_never_replaces_the_working_directory_or_an_input(where, tmp_path, monkeypatch):
    work, model = tmp_path / "work", tmp_path / "models" / "tiny"
    work.mkdir()
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    monkeypatch.chdir(work)
    target = {"cwd": Path("."), "cwd_parent": tmp_path, "input": model, "input_parent": model.parent}[where]
    with pytest.raises(UserInputError, match="replacing it would delete"):
        atomic.check_output_dir(target, force=True, protect=[model])
    assert (model / "config.json").is_file() and work.is_dir()


def test_sigterm_unwinds_like_ctrl_c(tmp_path):
    """The console script turns SIGTERM into an exception: one ``error: terminated`` line, exit 143, no traceback."""
    script = ("import time\nfrom llmprune.atomic import raise_on_sigterm\nfrom llmprune.cli.main import app, main\n"
              "@app.command('sleep')\ndef sleep():\n    print('ready', flush=True)\n    time.sleep(60)\n"
              "raise_on_sigterm()\nraise SystemExit(main(['sleep']))\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143 and err.strip() == "error: terminated", err


def test_a_symlinked_output_replaces_the_folder_it_points_to_and_a_broken_one_is_refused(tmp_path):
    real, link = tmp_path / "real", tmp_path / "link"
    real.mkdir()
    (real / "previous.txt").write_text("old")
    link.symlink_to(real)
    with atomic.atomic_dir(link, force=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert link.is_symlink() and sorted(p.name for p in real.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]  # no stale .old-* left
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(UserInputError, match="a broken symbolic link"):
        atomic.check_output_dir(tmp_path / "dangling")


def test_a_name_too_long_to_stage_is_refused_before_any_work(tmp_path):
    with pytest.raises(UserInputError, match="the name is too long to stage"):
        atomic.check_output_dir(tmp_path / ("o" * 245))
    atomic.check_output_dir(tmp_path / ("o" * 200))


@pytest.mark.parametrize("variable", ["LLMPRUNE_CACHE_DIR", "LLMPRUNE_DATA_DIR"])
def test_force_never_replaces_the_cache_or_the_data_directory(variable, tmp_path, monkeypatch):
    """An alias's converted model lives in the cache, named calibration sets in the data directory: a run reads
    them without naming a path, and --force must still not delete them (or a folder holding them)."""
    from llmprune.pipeline import protected_inputs

    inside = tmp_path / "store"
    (inside / "models").mkdir(parents=True)
    monkeypatch.setenv(variable, str(inside))
    for target in (inside, tmp_path):
        with pytest.raises(UserInputError, match="replacing it would delete the input"):
            atomic.check_output_dir(target, force=True, protect=protected_inputs("smollm2-135m", "c4"))


def test_previous_contents_that_cannot_be_deleted_are_named_in_a_warning(tmp_path, monkeypatch):
    """A --force replace whose old folder cannot be removed (a read-only folder inside it) keeps the new output and
    says which hidden folder is left, instead of leaving it silently."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    real_rmtree = shutil.rmtree
    monkeypatch.setattr(atomic.shutil, "rmtree", lambda path, ignore_errors=False: None
                        if ".out.old-" in str(path) else real_rmtree(path, ignore_errors=ignore_errors))
    with pytest.warns(UserWarning, match=r"out was replaced, but its previous contents could not all be deleted: "
                                         r"remove .*\.out\.old-\w+ by hand"):
        with atomic.atomic_dir(out, force=True) as staged:
            (staged / "new.txt").write_text("new")
    assert (out / "new.txt").read_text() == "new"
    left = [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.old-")]
    assert len(left) == 1
