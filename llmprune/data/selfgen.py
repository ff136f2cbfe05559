"""``--calib self``: calibration windows the model writes itself, so compression needs no dataset at all.

Data-free quantization work (LLM-QAT, Liu et al. 2023, arXiv:2305.17888, Sec. 2.1) has the model generate its own
training text from a start token and finds it calibrates as well as real data. We sample every window from a start
token with plain multinomial sampling over the full softmax of ``logits / temperature`` (no top-k/top-p), seeded by a
``torch.Generator``, with a KV cache, ``batch`` windows at a time. Each window is exactly ``seqlen`` tokens: the start
token followed by ``seqlen - 1`` sampled tokens (end-of-text tokens are kept and generation goes on past them, as in a
corpus of concatenated documents).

Spec: ``self[:temperature=T,start=bos|random,batch=B]`` (defaults 1.0, bos, 16). ``start=bos`` begins every window
with the tokenizer's BOS token (the model's ``bos_token_id`` when the tokenizer has none); ``start=random`` draws the
first token of each window uniformly from the tokenizer's vocabulary, as LLM-QAT does.

Deviation: LLM-QAT picks the first 3-5 tokens greedily (top-1) and samples the rest; we sample every token, which keeps
the text diverse when all windows share the BOS start. The windows depend on ``batch`` (one generator feeds the whole
batch), so the batch size is part of the spec and is recorded; the result is deterministic on CPU for a given spec,
seed and model.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..errors import UserInputError
from ..model.kv_cache import cache_keyword, returned_cache
from ..recipe import Calibration

DEFAULTS = {"temperature": 1.0, "start": "bos", "batch": 16}


def parse_self_spec(spec: str) -> dict:
    """'self' or 'self:temperature=0.8,start=random,batch=8' -> settings (one message per kind of mistake)."""
    _, _, rest = str(spec).partition(":")
    settings = dict(DEFAULTS)
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in DEFAULTS:
            raise UserInputError(f"--calib {spec}: write self[:temperature=T,start=bos|random,batch=B], "
                                 f"e.g. self:temperature=0.8")
        settings[key] = _parse_value(spec, key, value.strip())
    return settings


def _parse_value(spec: str, key: str, value: str):
    try:
        parsed = float(value) if key == "temperature" else int(value) if key == "batch" else value
    except ValueError:
        raise UserInputError(f"--calib {spec}: {key}={value} is not a number") from None
    if key == "temperature" and not 0.0 < parsed < float("inf"):
        raise UserInputError(f"--calib {spec}: temperature must be > 0 (1.0 samples the model's own distribution)")
    if key == "batch" and parsed < 1:
        raise UserInputError(f"--calib {spec}: batch must be at least 1")
    if key == "start" and parsed not in ("bos", "random"):
        raise UserInputError(f"--calib {spec}: start must be 'bos' or 'random'")
    return parsed


def start_token(model, tokenizer) -> int:
    """The BOS id of the tokenizer, else of the model config; an error when neither has one."""
    for owner in (tokenizer, getattr(model, "config", None), getattr(model, "generation_config", None)):
        token = getattr(owner, "bos_token_id", None)
        if isinstance(token, int):
            return token
    raise UserInputError("--calib self: the model has no BOS token; use --calib self:start=random")


def self_generated_windows(model, tokenizer, calibration: Calibration, *,
                           progress: bool = True) -> tuple[Tensor, dict]:
    """[nsamples, seqlen] int64 windows sampled from ``model``, and the settings that reproduce them (a progress bar
    counts the generated tokens: 32 windows of 512 take minutes on a CPU)."""
    from tqdm.auto import tqdm

    settings = parse_self_spec(calibration.source)
    vocab = min(len(tokenizer), int(model.config.vocab_size))  # no padding rows the tokenizer never emits
    generator = torch.Generator().manual_seed(int(calibration.seed))
    bos = start_token(model, tokenizer) if settings["start"] == "bos" else None
    batches = []
    bar = tqdm(total=calibration.nsamples * (calibration.seqlen - 1), desc="generating calibration text",
               unit="tok", disable=not progress, leave=False)
    for first in range(0, calibration.nsamples, settings["batch"]):
        count = min(settings["batch"], calibration.nsamples - first)
        if bos is None:
            starts = torch.randint(0, vocab, (count, 1), generator=generator)
        else:
            starts = torch.full((count, 1), bos, dtype=torch.int64)
        batches.append(sample(model, starts, calibration.seqlen, settings["temperature"], generator,
                              on_step=bar.update))
    bar.close()
    ids = torch.cat(batches)
    description = {"source": "self", "split": "generated", "origin": "model", **settings, "start_token": bos,
                   "sampling": "multinomial over the full softmax of logits/temperature, KV cache, torch.Generator",
                   "preview": _preview(tokenizer, ids[0])}
    return ids, description


@torch.no_grad()
def sample(model, starts: Tensor, length: int, temperature: float, generator: torch.Generator,
           on_step=None) -> Tensor:
    """Extend ``starts`` [batch, 1] to ``length`` tokens by sampling; the draws come from ``generator`` on the CPU so
    that a seed means the same tokens whatever the model's device. ``on_step(n)``: n tokens were just drawn."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    ids = starts.to(torch.int64)
    step_input, cache, keyword = ids.to(device), None, cache_keyword(model)
    try:
        while ids.shape[1] < length:
            out = model(input_ids=step_input, use_cache=True, **{keyword: cache})
            cache = returned_cache(out, keyword)
            logits = out.logits[:, -1, :].float().cpu() / temperature
            probs = torch.softmax(logits, dim=-1)
            token = torch.multinomial(probs, 1, generator=generator)
            ids = torch.cat([ids, token], dim=1)
            step_input = token.to(device)
            if on_step is not None:
                on_step(token.shape[0])
    finally:
        model.train(was_training)
    return ids


def _preview(tokenizer, ids: Tensor, chars: int = 120) -> str:
    """The start of the first window as text, for the manifest reader."""
    return tokenizer.decode(ids[:64].tolist())[:chars]
