"""compress_(spill_dir=...) / `llmprune compress --spill-to-disk`: a dense output's finished weights live in memory
backed by unlinked files, so the kernel can drop them; the weights themselves must not change."""
from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from llmprune import Recipe, compress_, parse_sparsity
from llmprune.engine.spill import Spill
from llmprune.errors import UserInputError
from tests.tiny_models import tiny_calibration, tiny_model

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")


def _spilled_ranges() -> list[tuple[int, int]]:
    """Address ranges of this process's mappings of (deleted) spill files."""
    ranges = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            if ".llmprune-spill-" in line and "(deleted)" in line:
                start, end = (int(part, 16) for part in line.split()[0].split("-"))
                ranges.append((start, end))
    return ranges


def _is_spilled(tensor: torch.Tensor, ranges) -> bool:
    pointer = tensor.untyped_storage().data_ptr()
    return any(start <= pointer < end for start, end in ranges)


@linux_only
def test_move_keeps_values_and_parameter_and_leaves_no_file(tmp_path):
    torch.manual_seed(0)
    linear = nn.Linear(96, 40)
    param, before = linear.weight, linear.weight.detach().clone()
    Spill(tmp_path).move_(linear)
    assert linear.weight is param and torch.equal(linear.weight, before)  # ties through the Parameter hold
    assert _is_spilled(linear.weight, _spilled_ranges())
    assert not _is_spilled(linear.bias, _spilled_ranges())
    assert list(tmp_path.iterdir()) == []  # unlinked at once: a crash leaves nothing on disk
    with torch.no_grad():
        x = torch.randn(3, 96)
        torch.testing.assert_close(linear(x), x @ before.T + linear.bias, rtol=0, atol=0)


@linux_only
def test_compress_with_spill_gives_the_same_weights_and_spills_only_compressed_ones(tmp_path):
    recipe = Recipe(method="sparsegpt", sparsity=parse_sparsity("2:4"), include_lm_head=True)
    plain, _ = tiny_model("llama")
    compress_(plain, recipe, tiny_calibration(), progress=False)
    spilled, _ = tiny_model("llama")
    report = compress_(spilled, recipe, tiny_calibration(), progress=False, spill_dir=tmp_path)
    expected = plain.state_dict()
    for name, tensor in spilled.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
    ranges = _spilled_ranges()
    for name, param in spilled.named_parameters():
        module = name.rsplit(".", 1)[0]
        assert _is_spilled(param, ranges) == (name.endswith(".weight") and module in report.records), name
    assert "lm_head" in report.records and list(tmp_path.iterdir()) == []


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full, raising=False)
    linear = nn.Linear(16, 8)
    before = linear.weight.detach().clone()
    with pytest.raises(UserInputError, match=r"cannot reserve .*No space left on device.*free disk space") as info:
        Spill(tmp_path).move_(linear)
    assert "\n" not in str(info.value)
    assert torch.equal(linear.weight, before) and list(tmp_path.iterdir()) == []


def test_spill_refuses_packed_formats_and_missing_folders(tmp_path):
    model, _ = tiny_model("llama")
    recipe = Recipe(method="magnitude", sparsity=parse_sparsity("2:4"))
    with pytest.raises(UserInputError, match="spill_dir is for dense outputs"):
        compress_(model, recipe, progress=False, pack="sparse24", spill_dir=tmp_path)
    with pytest.raises(UserInputError, match="not a writable folder"):
        compress_(model, recipe, progress=False, spill_dir=tmp_path / "missing")
    fresh, _ = tiny_model("llama")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))


def test_a_ram_backed_spill_folder_warns(tmp_path, monkeypatch):
    """A folder on tmpfs keeps its files in RAM; the file system is read from /proc/mounts (faked here, so the
    test runs wherever pytest's tmp folder lives)."""
    import warnings

    import llmprune.engine.spill as spill_module

    monkeypatch.setattr(spill_module, "_file_system", lambda directory: "tmpfs")
    with pytest.warns(UserWarning, match="keeps files in RAM: spilling there saves no memory"):
        Spill(tmp_path)
    monkeypatch.setattr(spill_module, "_file_system", lambda directory: "ext4")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Spill(tmp_path)  # a disk: no warning


@linux_only
def test_the_file_system_of_a_folder_is_read_from_proc_mounts():
    from llmprune.engine.spill import _file_system

    with open("/proc/mounts") as mounts:
        root_kind = next(line.split()[2] for line in mounts if line.split()[1] == "/")
    assert _file_system(Path("/")) == root_kind
