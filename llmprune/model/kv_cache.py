"""How a model's forward takes and returns its KV cache. transformers 5.x renamed ``past_key_values`` to ``cache``
(the old keyword warns from 5.24 and is removed in 5.40); llmprune supports transformers >= 5.18, whose forwards
still take only the old name, so it asks the model's signature instead of naming either."""
from __future__ import annotations

import inspect

from torch import nn


def cache_keyword(model: nn.Module) -> str:
    """``"cache"`` where the forward takes it, else the older ``"past_key_values"``."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # a forward without a readable signature: the older, still widespread name
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def returned_cache(output, keyword: str):
    """The cache a forward returned, under the keyword it was passed by."""
    return output.get(keyword)  # a ModelOutput is a dict of the values that are set
