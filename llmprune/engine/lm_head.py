"""Compressing the output projection (``lm_head``), only when the recipe asks for it.

The decoder loop never touches it. Its input is the final normed hidden state, so its statistics come from one extra
forward pass of the already-compressed model, stopped at the head by a pre-hook (no logits are computed). A head tied
to the input embeddings is untied first: pruning it must not prune the embedding table.
"""
from __future__ import annotations

import torch
from torch import nn

from ..model.layers import get_weight, set_weight_
from ..types import Stats
from .stats import StatsCollector


class _ReachedHead(Exception):
    pass


def head_name(model: nn.Module) -> tuple[str, nn.Module]:
    head = model.get_output_embeddings()
    for name, module in model.named_modules():
        if module is head:
            return name, head
    raise ValueError("the model has no output embeddings module")


def untie_(model: nn.Module, head: nn.Module) -> bool:
    """Give the head its own copy of the weight; returns whether it was tied."""
    inputs = model.get_input_embeddings()
    if inputs is None or head.weight is not inputs.weight:
        return False
    head.weight = nn.Parameter(head.weight.detach().clone(), requires_grad=False)
    model.config.tie_word_embeddings = False
    if hasattr(model.config, "get_text_config"):
        model.config.get_text_config().tie_word_embeddings = False
    return True


@torch.no_grad()
def compress_lm_head_(model: nn.Module, task, calib_ids=None, *, batch_size: int = 1) -> dict:
    """Run ``task`` on the head (statistics from ``calib_ids`` when it needs any). The model stays where it is."""
    name, head = head_name(model)
    tied = untie_(model, head)
    needs = frozenset(task.needs(name))
    stats = Stats()
    if needs:
        collector = StatsCollector({name: (head, needs)})

        def stop(module, args):
            raise _ReachedHead

        device = head.weight.device
        with collector.hooks():
            handle = head.register_forward_pre_hook(stop)
            try:
                for batch in calib_ids.split(batch_size):
                    try:
                        model(input_ids=batch.to(device), use_cache=False)
                    except _ReachedHead:
                        pass
                    collector.flush()
            finally:
                handle.remove()
        stats = collector.stats(name)
    set_weight_(head, task(name, get_weight(head).to(torch.float32, copy=True), stats))
    return {"lm_head": name, "untied": tied}
