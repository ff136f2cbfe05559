"""Finished layers' weights moved into disk-backed memory (``compress_(spill_dir=...)``, ``--spill-to-disk``).

Why: a dense output keeps every compressed weight as new anonymous memory until it is saved, so its run needs about
the model's size in RAM on top of the mmapped checkpoint (README, "How much a bigger model needs"). A weight copied
into a shared mapping of a file is backed by that file: the kernel writes its pages back and drops them under memory
pressure, like the checkpoint's own pages, so the run holds little more than one layer's work in anonymous memory.

Each weight gets its own file, unlinked as soon as it is mapped: the mapping keeps the file's blocks until the tensor
is freed or the process ends, so no crash leaves a file behind. The blocks are reserved first (``posix_fallocate``),
so a full disk is a one-line error here rather than a SIGBUS when the kernel writes a page back.
"""
from __future__ import annotations

import itertools
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from ..errors import UserInputError

_counter = itertools.count()


class Spill:
    """Moves weights into unlinked files under ``directory`` (which must be on a disk, not a RAM-backed tmpfs)."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        if not self.directory.is_dir() or not os.access(self.directory, os.W_OK):
            raise UserInputError(f"spill directory {self.directory} is not a writable folder; give an existing "
                                 f"folder on a disk with room for the compressed weights")
        kind = _file_system(self.directory)
        if kind in ("tmpfs", "ramfs"):
            warnings.warn(f"spill directory {self.directory} is on {kind}, which keeps files "
                          f"in RAM: spilling there saves no memory; write the output to a disk", stacklevel=3)
        self.bytes = 0  # moved so far

    def move_(self, module: nn.Module) -> None:
        """Give ``module.weight`` the same values in file-backed storage (the Parameter object stays, so ties hold).
        Weights off the CPU stay where they are: the page cache holds CPU memory only."""
        param = module.weight
        if param.device.type != "cpu" or param.numel() == 0:
            return
        nbytes = param.numel() * param.element_size()
        mapped = _mapped_empty(self.directory, param.numel(), param.dtype, nbytes)
        mapped.copy_(param.detach().reshape(-1))
        param.data = mapped.view(param.shape)
        self.bytes += nbytes


def _mapped_empty(directory: Path, numel: int, dtype: torch.dtype, nbytes: int) -> torch.Tensor:
    path = directory / f".llmprune-spill-{os.getpid()}-{next(_counter)}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            _reserve(fd, nbytes)
        except OSError as exc:
            raise UserInputError(f"--spill-to-disk: cannot reserve {nbytes / 2**20:.1f} MiB in {directory} "
                                 f"({exc.strerror}); free disk space there or run without --spill-to-disk") from None
        return torch.from_file(str(path), shared=True, size=numel, dtype=dtype)
    finally:
        os.close(fd)
        os.unlink(path)  # the mapping keeps the blocks; nothing stays on disk after the tensor or the process


def _reserve(fd: int, nbytes: int) -> None:
    if hasattr(os, "posix_fallocate"):
        os.posix_fallocate(fd, 0, nbytes)
    else:  # macOS: a sparse file (a full disk then shows when pages are written back)
        os.ftruncate(fd, nbytes)


def _file_system(directory: Path) -> str | None:
    """The type of the file system holding ``directory`` (Linux's /proc/mounts; None elsewhere)."""
    try:
        with open("/proc/mounts") as mounts:
            entries = [line.split()[1:3] for line in mounts if len(line.split()) > 2]
    except OSError:
        return None
    here = directory.resolve()
    best = max((Path(point) for point, _ in entries if here == Path(point) or Path(point) in here.parents),
               key=lambda point: len(point.parts), default=None)
    return next((kind for point, kind in reversed(entries) if Path(point) == best), None)
