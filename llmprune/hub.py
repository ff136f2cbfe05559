"""Publish an llmprune output folder to the Hugging Face Hub: validate, add a model card, ``create_repo`` +
``upload_folder``.

Why validate first: a folder with a missing or corrupted shard would publish a model that cannot be loaded, so the
folder must carry a valid ``llmprune.json`` whose shards are all present with the recorded size and sha256
(``llmprune.manifest.validate``). The token comes from huggingface_hub's standard places (``HF_TOKEN``, the login
file); llmprune never reads or prints it. A dry run lists what would be uploaded and the card, and writes nothing.
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import CorruptCheckpoint, LlmpruneError, UserInputError

# Never uploaded: hidden files (temp dirs of atomic writes, .cache) and Python caches.
IGNORE = [".*", "*/.*", "__pycache__", "*/__pycache__/*", "*.pyc"]
CARD = "README.md"


class PushFailed(LlmpruneError, ConnectionError):
    """The Hub refused or could not be reached."""


@dataclass
class PushPlan:
    """What a push sends: files (relative path, bytes), the card text, and where it goes."""

    directory: Path
    repo_id: str
    private: bool = False
    revision: str | None = None
    files: list[tuple[str, int]] = field(default_factory=list)
    card: str = ""
    card_exists: bool = False
    url: str | None = None

    def listing(self) -> str:
        total = sum(size for _, size in self.files)
        lines = [f"{path}  ({size / 1e6:.2f} MB)" for path, size in self.files]
        if not self.card_exists:
            lines.append(f"{CARD}  (generated model card)")
        where = f"{self.repo_id}" + (f"@{self.revision}" if self.revision else "")
        return "\n".join([f"would upload {len(lines)} files ({total / 1e6:.2f} MB) to {where}"
                          f"{' (private)' if self.private else ''}:", *[f"  {line}" for line in lines]])


def check_repo_id(repo_id: str) -> str:
    """USER/NAME, checked with the Hub's own rules (``validate_repo_id``) before any network call."""
    from huggingface_hub.utils import validate_repo_id

    hint = f"--repo-id {repo_id!r}: write USER/NAME (letters, digits, '-', '_', '.'), e.g. alice/smollm2-wanda-2-4"
    if not isinstance(repo_id, str) or repo_id.count("/") != 1:
        raise UserInputError(hint)
    try:
        validate_repo_id(repo_id)
    except ValueError:  # HFValidationError subclasses ValueError
        raise UserInputError(hint) from None
    return repo_id


def check_folder(directory) -> dict:
    """The folder's validated manifest; a one-line error when it is not a complete llmprune output folder."""
    from . import manifest as mf

    directory = Path(directory)
    if not directory.is_dir():
        raise UserInputError(f"{directory}: not a folder; give the output folder of llmprune compress")
    if not (directory / mf.FILENAME).is_file():
        raise CorruptCheckpoint(f"{directory}: no {mf.FILENAME} manifest; push the output folder of llmprune "
                                f"compress (a base model or a hand-made folder: `hf upload` pushes it as it is)")
    return mf.validate(directory)


def _ignored(relative: str) -> bool:
    parts = relative.split("/")
    return any(fnmatch.fnmatch(relative, p) for p in IGNORE) or any(p.startswith(".") or p == "__pycache__"
                                                                    for p in parts)


def folder_files(directory: Path) -> list[tuple[str, int]]:
    """The files ``upload_folder`` will send (same ignore rules), sorted, with sizes."""
    files = []
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory).as_posix()
        if path.is_file() and not _ignored(relative):
            files.append((relative, path.stat().st_size))
    return files


_BRANCH = re.compile(r"\w[\w.-]*(/\w[\w.-]*)*", re.ASCII)  # a git branch name, as the Hub accepts one


def plan_push(directory, repo_id: str, *, private: bool = False, revision: str | None = None) -> PushPlan:
    """Validate everything and prepare the card; no network, no writes."""
    from .model_cards import render_card
    from .model_cards.render import GENERATED_MARK

    directory = Path(directory)
    repo_id = check_repo_id(repo_id)
    if revision is not None and (not _BRANCH.fullmatch(revision) or ".." in revision):
        raise UserInputError(f"--revision {revision!r}: not a branch name; use letters, digits and . _ - / "
                             f"(e.g. sparse-2of4)")
    manifest = check_folder(directory)
    card_path = directory / CARD
    existing = card_path.read_text(encoding="utf-8") if card_path.is_file() else None
    keep = existing is not None and GENERATED_MARK not in existing  # a card the user wrote or edited
    card = existing if keep else render_card(manifest, repo_id=repo_id)
    files = [(path, size) for path, size in folder_files(directory) if keep or path != CARD]
    return PushPlan(directory, repo_id, private, revision, files, card, keep)


def _hub_call(what: str, fn, *args, **kwargs):
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError, OfflineModeIsEnabled

    try:
        return fn(*args, **kwargs)
    except OfflineModeIsEnabled:  # a ConnectionError too: caught first, the fix is not the network
        raise UserInputError("HF_HUB_OFFLINE is set, so nothing can be pushed; unset it (or plan with --dry-run)") \
            from None
    except LocalTokenNotFoundError:
        raise UserInputError("not logged in to the Hugging Face Hub; run `hf auth login` or set HF_TOKEN") from None
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            raise UserInputError(f"{what}: the Hub refused the token (HTTP {status}); log in with a write token "
                                 f"(`hf auth login`)") from None
        raise PushFailed(f"{what}: the Hub answered HTTP {status}; retry later") from None
    except _network_errors() as exc:
        raise PushFailed(f"{what}: the Hub is unreachable ({exc.__class__.__name__}); check the network and retry") \
            from None


def _network_errors() -> tuple[type, ...]:
    """What an unreachable Hub raises: OS-level errors (requests' too), and the transport errors of the httpx client
    that huggingface_hub >= 1.0 sends its requests through (``httpx``, or ``httpx2``), which are neither."""
    import importlib

    errors: list[type] = [OSError, ConnectionError]
    for client in ("httpx", "httpx2"):
        try:
            errors.append(importlib.import_module(client).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def push(directory, repo_id: str, *, private: bool = False, revision: str | None = None, dry_run: bool = False,
         api=None) -> PushPlan:
    """Push ``directory`` to ``repo_id`` (``create_repo`` + ``upload_folder``); with ``dry_run`` only plan it.

    A generated card is written to ``directory/README.md`` before the upload, once the repo exists (the folder then
    matches what is on the Hub): one that compress wrote is re-rendered with ``repo_id`` in its usage snippet, one
    without the generated mark is kept.
    ``revision`` names a branch, created from main when missing. ``api`` is an ``HfApi`` (tests pass a mock).
    """
    plan = plan_push(directory, repo_id, private=private, revision=revision)
    if dry_run:
        return plan
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    url = _hub_call("create_repo", api.create_repo, plan.repo_id, private=private, exist_ok=True)
    if revision:
        _hub_call("create_branch", api.create_branch, plan.repo_id, branch=revision, exist_ok=True)
    if not plan.card_exists:  # once the Hub has answered: an offline push leaves the folder as it was
        from .model_cards.render import write_text_atomic

        write_text_atomic(plan.directory / CARD, plan.card)
    _hub_call("upload_folder", api.upload_folder, repo_id=plan.repo_id, folder_path=str(plan.directory),
              revision=revision, ignore_patterns=IGNORE,
              commit_message=f"Upload {plan.directory.name} with llmprune")
    plan.url = str(url)
    return plan
