"""Change detection for cached launch plans: replacement and in-place writes change the fingerprint, reads do not,
and inference tensors (no version counter) are fingerprinted by identity alone instead of raising."""
from __future__ import annotations

import torch

from llmprune.tensor_state import fingerprint, version


def test_fingerprint_sees_in_place_writes_and_replacement_but_not_reads():
    a, b = torch.zeros(4), torch.ones(4)
    first = fingerprint((a, None, b))
    assert fingerprint((a, b)) == first  # None entries (an absent bias) are skipped
    _ = a.sum(), b[1:].clone()
    assert fingerprint((a, b)) == first
    b[0] = 2.0
    assert fingerprint((a, b)) != first
    second = fingerprint((a, b))
    assert fingerprint((a, b.clone())) != second  # equal values, another tensor
    b.data = torch.full((4,), 2.0)  # a storage swap counts no version
    assert fingerprint((a, b)) != second


def test_inference_tensors_are_fingerprinted_by_identity():
    with torch.inference_mode():
        t = torch.zeros(3)
    plain = torch.zeros(3)
    assert version(t) == -1 and version(plain) == 0
    assert fingerprint((plain, t)) == ((id(plain), 0, plain.data_ptr()), (id(t), -1, t.data_ptr()))
