"""Bits-per-parameter accounting, checked against numbers worked out by hand."""
import pytest
import torch

from llmprune.quant.bits_per_param import bits_per_param, group_sparse_bits, nm_bits, spqr_bits, uniform_bits
from llmprune.types import QuantizedWeight


def _qw(bits, group, mask=None, symmetric=False, rows=4, cols=32):
    n = cols // group
    return QuantizedWeight(torch.zeros(rows, cols, dtype=torch.uint8), torch.ones(rows, n), torch.zeros(rows, n),
                           bits, group, symmetric, mask=mask)


def test_paper_numbers():
    assert spqr_bits(3, 16, 3, 16, 0.0) == 3.625
    assert spqr_bits(3, 16, 3, 16, 0.01) == pytest.approx(3.945)
    assert uniform_bits(4, 128) == 4.25 and uniform_bits(3, 128) == 3.25 and uniform_bits(4, 128, True) == 4.125
    assert group_sparse_bits(4, 16, 0.5) == 3.5
    assert nm_bits(4, 128, 2, 4) == 0.5 * (4 + 2) + 0.25


def test_bits_per_param_reads_the_pattern_from_the_mask():
    assert bits_per_param(_qw(4, 8)) == 4 + 32 / 8
    groups = torch.zeros(4, 32, dtype=torch.bool)
    groups[:, :8] = groups[:, 16:24] = True
    assert bits_per_param(_qw(4, 8, groups)) == 0.5 * (4 + 48 / 8)
    two_four = torch.tensor([True, False, True, False]).repeat(4, 8)
    assert bits_per_param(_qw(4, 32, two_four)) == 0.5 * 4 + 0.5 * 2 + 32 / 32
    rand = torch.zeros(4, 32, dtype=torch.bool)
    rand[0, :5] = rand[1, 3:20] = True
    kept = 22 / 128
    assert bits_per_param(_qw(4, 32, rand)) == pytest.approx(1 + kept * 4 + 1)
    assert bits_per_param(_qw(4, 8, torch.ones(4, 32, dtype=torch.bool))) == 8.0
