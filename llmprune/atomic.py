"""Outputs that appear whole or not at all: staged folders beside their targets, renamed into place together.

A run writes each output (the llmprune folder, its compressed-tensors export, a sweep's tables) into a hidden sibling
``.NAME.tmp-XXXX``. Only when every one is complete are the previous targets moved aside, the staged folders renamed
into place and the old ones deleted. A failure before that removes the staged folders; a failure during the
renames puts every previous target back. Ctrl-C or SIGTERM during the renames and the clean-ups is held back until
they are done (``deferred_signals``): an interrupt never leaves one output new and another old, nor a half-deleted
folder.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import tempfile
import threading
import uuid
import warnings
from pathlib import Path

from .errors import UserInputError


class Terminated(BaseException):
    """SIGTERM, raised like KeyboardInterrupt so that staged outputs are cleaned up on the way out."""


def raise_on_sigterm() -> None:
    """Make SIGTERM unwind the stack (``finally`` blocks, staged-folder clean-up) instead of killing the process."""
    def handler(signum, frame):
        raise Terminated()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


@contextlib.contextmanager
def deferred_signals():
    """Hold SIGINT and SIGTERM back for the duration; deliver the first one that came afterwards."""
    if threading.current_thread() is not threading.main_thread():  # handlers can only be set in the main thread
        yield
        return
    caught: list[int] = []
    signals = (signal.SIGINT, signal.SIGTERM)
    before = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum)) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in before.items():  # None: a handler not set from Python, i.e. the default
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        if caught:
            signal.raise_signal(caught[0])


def check_output_dir(out_dir, force: bool = False, protect=()) -> Path:
    """Fail early (before any model is loaded) when ``out_dir`` exists and is not an empty folder, unless ``force``;
    when replacing it would delete the working directory or one of the run's inputs (``protect``); or when nothing
    can be written where it goes."""
    out = _check_target(_through_link(Path(out_dir)), force)
    _check_protected(out, protect)
    _check_writable(out)
    return out


def _through_link(out: Path) -> Path:
    """A symbolic link to a folder: the folder it points to is the output (the link keeps pointing at it)."""
    if out.is_symlink():
        if not out.exists():
            raise UserInputError(f"--output {out}: a broken symbolic link; remove it or choose another path")
        return out.resolve()
    return out


def _check_target(out: Path, force: bool) -> Path:
    if out.is_dir() and os.path.ismount(out):
        raise UserInputError(f"--output {out}: a mount point, which cannot be replaced by renaming; write to a "
                             f"folder inside it")
    if out.exists() and not out.is_dir():
        raise UserInputError(f"--output {out}: a file with that name exists; choose a folder path")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UserInputError(f"--output {out}: folder is not empty; pass --force to replace it or choose another path")
    return out


def _check_protected(out: Path, protect) -> None:
    """``--force`` replaces the whole folder: never one that holds the working directory or an input of the run."""
    target = out.resolve()
    for what, path in (("the current directory", Path.cwd()), *(("the input " + str(p), Path(p)) for p in protect)):
        path = path.resolve()
        if path == target or target in path.parents:
            raise UserInputError(f"--output {out}: replacing it would delete {what}; choose another output folder")


def nearest_existing_parent(out: Path) -> Path:
    """The folder the output will be staged in, or its closest ancestor that exists yet (same file system)."""
    existing = out.absolute().parent
    while not existing.exists():
        existing = existing.parent
    return existing


def _check_writable(out: Path) -> None:
    """The output's temp dir goes beside it: find out now, not after the compression, that it cannot."""
    existing = nearest_existing_parent(out)
    if not existing.is_dir():
        raise UserInputError(f"--output {out}: {existing} is a file, not a folder; choose another path")
    staged = f".{out.name}.tmp-{'x' * 8}"
    if len(os.fsencode(staged)) > _name_max(existing):
        raise UserInputError(f"--output {out}: the name is too long to stage beside it as {staged[:24]}...; "
                             f"choose a shorter name")
    probe_writable(existing, f"--output {out}")


def probe_writable(folder: Path, flag: str) -> None:
    """Create and remove a folder in ``folder``: permissions, a read-only mount or an immutable folder all show
    only when writing (``os.access`` misses the last two, and root passes every permission check)."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".llmprune-probe-", dir=folder))
    except OSError as exc:
        raise UserInputError(f"{flag}: cannot write in {folder} ({exc.strerror}); choose another path") from None


def _name_max(directory: Path) -> int:
    try:
        return os.pathconf(directory, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        return 255


@contextlib.contextmanager
def atomic_dirs(out_dirs, force: bool = False, protect=()):
    """Yield one staged folder per target; on success they replace the targets together, on any exception they are
    removed and the targets stay as they were."""
    outs = [check_output_dir(d, force, protect).absolute() for d in out_dirs]
    staged, created = [], []
    try:
        for out in outs:
            created += _make_parents(out.parent)
            staged.append(out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
            staged[-1].mkdir()
        yield list(staged)
        for out in outs:
            _check_target(out, force)  # a target may have appeared meanwhile
        for tmp in staged:
            _default_modes(tmp)
    except BaseException:
        with deferred_signals():
            for tmp in staged:
                shutil.rmtree(tmp, ignore_errors=True)
            _remove_empty(created)
        raise
    committed = False
    try:
        with deferred_signals():
            try:
                _commit(list(zip(staged, outs)))
                committed = True
            except OSError as exc:  # the previous outputs are back; say which one could not be replaced
                _remove_empty(created)
                where = exc.filename or outs[0]
                raise UserInputError(f"--output {where}: could not be replaced ({exc.strerror or exc}); the "
                                     f"previous output is unchanged; choose another path") from None
    except (KeyboardInterrupt, Terminated):  # held back until the outputs were in place: say they are whole
        if committed:
            warnings.warn(f"the interrupt came after the output was complete; {', '.join(map(str, outs))} "
                          f"{'is' if len(outs) == 1 else 'are'} in place", stacklevel=3)
        raise


def _remove_empty(created: list[Path]) -> None:
    """Remove the parent folders a run made (deepest first), unless something else is in them now."""
    for folder in reversed(created):
        with contextlib.suppress(OSError):
            folder.rmdir()


def _make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; returns the ones created, outermost first."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        path.mkdir(exist_ok=True)
    return missing[::-1]


@contextlib.contextmanager
def atomic_dir(out_dir, force: bool = False, protect=()):
    """``atomic_dirs`` for one target: yields its staged folder."""
    with atomic_dirs([out_dir], force, protect) as (tmp,):
        yield tmp


def _commit(pairs: list[tuple[Path, Path]]) -> None:
    """Move the previous targets aside, rename the staged folders into place, delete the old ones; if a rename fails,
    undo the ones done so the previous outputs are back."""
    aside, placed = [], []
    try:
        for _, out in pairs:
            if out.exists():
                old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
                out.rename(old)
                aside.append((old, out))
        for tmp, out in pairs:
            tmp.rename(out)
            placed.append((tmp, out))
    except BaseException:
        for tmp, out in placed:
            out.rename(tmp)
        for old, out in aside:
            old.rename(out)
        for tmp, _ in pairs:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old, out in aside:
        shutil.rmtree(old, ignore_errors=True)
        if old.exists():  # e.g. a read-only folder inside it: the new output is in place, say what is left
            warnings.warn(f"{out} was replaced, but its previous contents could not all be deleted: remove {old} "
                          f"by hand", stacklevel=4)


def _default_modes(directory: Path) -> None:
    """Give the files the permissions a plain ``open()`` would (libraries that write through ``mkstemp`` leave
    ``0600``, which other users and services cannot read)."""
    probe = directory / f".mode-{uuid.uuid4().hex[:8]}"
    probe.touch()
    mode = stat.S_IMODE(probe.stat().st_mode)
    probe.unlink()
    for path in directory.rglob("*"):
        if path.is_file() and not path.is_symlink() and stat.S_IMODE(path.stat().st_mode) != mode:
            path.chmod(mode)
