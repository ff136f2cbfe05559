"""Greedy decoding with a static KV cache, one decode step replayed from a CUDA graph (or run eagerly / compiled).

Why: eager ``generate`` on a 7B model at batch 1 is bound by Python and kernel-launch overhead (dense: ~37 ms per
token on an H100 for ~13 GB of weights, i.e. about 10x the memory-bound time), which hides whatever the packed
kernels gain. Capturing one decode step in a CUDA graph replays all its kernels with one launch, so tokens/s then
measures the kernels. We capture by hand (``torch.cuda.CUDAGraph``) rather than through
``torch.compile(mode="reduce-overhead")``: no compile time (which did not finish for a 7B model inside the 140 s a
benchmark call had), and the Triton launchers run unchanged.

How: the whole decode state lives in fixed tensors — transformers' ``StaticCache`` (its position counter is a
tensor it advances in place), the last token ``ids [B, 1]``, the generated ``tokens [B, max_len]`` and their write
slot. One step reads ``ids``, runs the model, writes the argmax back into ``ids`` and ``tokens[:, slot]`` and advances
``slot``, all on the device, so the host loop is just ``replay()`` with no synchronization. transformers (>= 5) builds
its attention mask with tensor ops while a stream is being captured, and a static cache never skips the mask for
one-token queries, so the captured step is exact.

Before capture the step runs twice on a side stream (torch's recipe): that compiles and autotunes every Triton
kernel for these shapes (autotuning cannot run inside a capture) and allocates the cache. ``generate`` then resets
the cache in place (same storage, so the graph's addresses stay valid), prefills eagerly and replays.
"""
from __future__ import annotations

import torch
from torch import nn

from llmprune.errors import UserInputError
from llmprune.model.kv_cache import cache_keyword

MODES = ("eager", "graph", "compile")
WARMUP_STEPS = 2  # torch's capture recipe: the first step compiles and autotunes, the second runs warm


def tokens_emitted(steps: int) -> int:
    """Tokens a prefill and then ``steps`` decode steps write: the prefill's greedy token, then one per step."""
    return 1 + steps


def max_len_for(prompt_len: int, new_tokens: int, warmup: int = WARMUP_STEPS) -> int:
    """The ``max_len`` a decoder needs to ``prepare`` with ``warmup`` steps and then ``generate`` ``new_tokens``:
    the warm-up writes ``tokens_emitted(warmup)`` tokens after the prompt, which can exceed a short timed run's."""
    return prompt_len + max(new_tokens, tokens_emitted(warmup))


class StaticDecoder:
    """Greedy decode of ``batch`` sequences of at most ``max_len`` tokens (prompt + new) with ``model``.

    ``mode``: "eager" runs the step as Python (the reference: equal to ``generate``'s greedy tokens), "graph" replays
    it from a CUDA graph (CUDA only), "compile" runs ``torch.compile(step, backend=backend)`` (inductor by default;
    tests use backend "eager" to check tracing without a C++ toolchain).
    """

    def __init__(self, model: nn.Module, batch: int, max_len: int, mode: str = "eager", backend: str = "inductor"):
        from transformers import StaticCache

        if mode not in MODES:
            raise UserInputError(f"static decode mode {mode!r}: choose one of {', '.join(MODES)}")
        device = next(model.parameters()).device
        if mode == "graph" and device.type != "cuda":
            raise UserInputError(f"CUDA-graph decode needs the model on CUDA (it is on {device}); use mode 'eager'")
        self.model, self.mode, self.max_len, self.device = model, mode, max_len, device
        self.cache = StaticCache(config=model.config, max_cache_len=max_len)
        self.keyword = cache_keyword(model)
        self.ids = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.tokens = torch.zeros(batch, max_len, dtype=torch.long, device=device)
        self.slot = torch.zeros(1, dtype=torch.long, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self._step = torch.compile(self._eager_step, backend=backend) if mode == "compile" else self._eager_step

    @torch.no_grad()
    def _eager_step(self) -> None:
        """One decode step on the fixed tensors (the body that is captured)."""
        logits = self.model(input_ids=self.ids, use_cache=True, **{self.keyword: self.cache}).logits
        self._emit(logits)

    def _emit(self, logits: torch.Tensor) -> None:
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        self.ids.copy_(nxt)
        self.tokens.index_copy_(1, self.slot, nxt)
        self.slot.add_(1)

    @torch.no_grad()
    def prefill(self, prompt: torch.Tensor) -> None:
        """Reset the state in place and run the prompt; its greedy next token becomes the first generated one."""
        if prompt.shape[0] != self.ids.shape[0]:
            raise UserInputError(f"prompt batch {prompt.shape[0]} != decoder batch {self.ids.shape[0]}")
        self.cache.reset()
        self.slot.zero_()
        self._emit(self.model(input_ids=prompt.to(self.device), use_cache=True,
                              **{self.keyword: self.cache}).logits)

    def step(self) -> None:
        """One more token for every sequence (a graph replay once captured)."""
        if self.graph is not None:
            self.graph.replay()
        else:
            self._step()

    def prepare(self, prompt: torch.Tensor, warmup: int = WARMUP_STEPS) -> None:
        """Warm the step up (compile, autotune, allocate the cache) and, in graph mode, capture it."""
        self._check_room(prompt.shape[1], tokens_emitted(warmup))
        self.prefill(prompt)
        if self.mode != "graph":
            for _ in range(warmup):
                self._step()
            return
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                self._eager_step()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._eager_step()

    def generate(self, prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
        """``new_tokens`` greedy tokens after ``prompt`` ([B, new_tokens]); call ``prepare`` first for timing."""
        self._check_room(prompt.shape[1], new_tokens)
        self.prefill(prompt)
        for _ in range(new_tokens - 1):
            self.step()
        return self.tokens[:, :new_tokens].clone()

    def _check_room(self, prompt_len: int, new_tokens: int) -> None:
        if prompt_len + new_tokens > self.max_len:
            raise UserInputError(f"prompt {prompt_len} + {new_tokens} new tokens exceed the static cache "
                                 f"({self.max_len}); build the decoder with a larger max_len")
