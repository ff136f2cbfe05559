"""The bit layouts of docs/FORMATS.md, checked against hand-worked bytes and a pure-Python bit oracle."""
from __future__ import annotations

import torch
from hypothesis import given, settings, strategies as st

from llmprune.formats import get_format
from llmprune.formats.bits import pack_bits, pack_nibbles, unpack_bits, unpack_nibbles
from llmprune.types import QuantizedWeight


def _qw(codes, scale, zero, group, mask=None, bits=4):
    codes = torch.tensor([codes], dtype=torch.uint8)
    groups = codes.shape[1] // group
    return QuantizedWeight(codes, torch.full((1, groups), scale), torch.full((1, groups), float(zero)), bits, group,
                           mask=None if mask is None else torch.tensor([mask]))


def _python_stream(codes: list[int], bits: int) -> list[int]:
    """Oracle: concatenate each code's bits LSB-first, cut into 32-bit little-endian words, as signed int32."""
    stream = [(c >> b) & 1 for c in codes for b in range(bits)]
    stream += [0] * (-len(stream) % 32)
    words = [sum(bit << i for i, bit in enumerate(stream[k:k + 32])) for k in range(0, len(stream), 32)]
    return [w - (1 << 32) if w >= 1 << 31 else w for w in words]


def test_nibbles_low_nibble_is_even_index():
    assert pack_nibbles(torch.tensor([1, 2, 3, 15])).tolist() == [0x21, 0xF3]
    assert unpack_nibbles(torch.tensor([0x21, 0xF3], dtype=torch.uint8)).tolist() == [1, 2, 3, 15]


def test_kbit_worked_example():
    assert pack_bits(torch.tensor([[5, 1, 7, 2]]), 3).tolist() == [[0x5CD]]


@settings(max_examples=40, deadline=None)
@given(bits=st.integers(1, 8), data=st.data())
def test_kbit_matches_python_oracle(bits, data):
    codes = data.draw(st.lists(st.integers(0, (1 << bits) - 1), min_size=1, max_size=70))
    packed = pack_bits(torch.tensor([codes]), bits)
    assert packed.tolist() == [_python_stream(codes, bits)]
    assert unpack_bits(packed, bits, len(codes)).tolist() == [codes]


def test_int4_worked_example():
    packed = get_format("int4").pack(_qw([9, 8, 5, 15], 0.5, 8, 4))
    assert packed["qweight"].tolist() == [[0x89, 0xF5]]
    assert get_format("int4").unpack(packed).tolist() == [[0.5, 0.0, -1.5, 3.5]]


def test_sparse24_worked_example():
    packed = get_format("sparse24").pack(torch.tensor([[0, 1.5, 0, -2, 3, 0, 0, 0]]), dtype="float16")
    assert packed["values"].tolist() == [[1.5, -2.0, 3.0, 0.0]]
    assert packed["meta"].tolist() == [[0x4D]]


def test_sparse24_int4_worked_example():
    # weights [0, 1.5, 0, -2 | 3, 0, 0, 0] with scale 0.5, zero 8 -> codes [8, 11, 8, 4 | 14, 8, 8, 8]
    mask = [False, True, False, True, True, False, False, False]
    packed = get_format("sparse24_int4").pack(_qw([8, 11, 8, 4, 14, 8, 8, 8], 0.5, 8, 8, mask))
    assert packed["qvalues"].tolist() == [[0x4B, 0x8E]]
    assert packed["meta"].tolist() == [[0x4D]]


def test_group_sparse_int4_worked_example():
    qw = _qw([8, 8, 10, 6, 8, 8, 12, 9], 0.5, 8, 2)
    packed = get_format("group_sparse_int4").pack(qw)
    assert packed["group_idx"].tolist() == [[1, 3]]
    assert packed["qweight"].tolist() == [[0x6A, 0x9C]]
    assert get_format("group_sparse_int4").unpack(packed, 8).tolist() == [[0, 0, 1, -1, 0, 0, 2, 0.5]]


def test_spqr_worked_example():
    ext = {"scale_codes": torch.tensor([[1]]), "zero_codes": torch.tensor([[4]]), "scale_scale": torch.tensor([[0.25]]),
           "scale_zero": torch.tensor([[0.0]]), "zero_scale": torch.tensor([[1.0]]), "zero_zero": torch.tensor([[0.0]]),
           "stat_bits": 3, "stat_group": 1}
    outliers = (torch.tensor([0, 1]), torch.tensor([2]), torch.tensor([9.5], dtype=torch.float16))
    qw = QuantizedWeight(torch.tensor([[5, 1, 7, 2]], dtype=torch.uint8), torch.tensor([[0.25]]),
                         torch.tensor([[4.0]]), 3, 4, outliers=outliers, extra=ext)
    packed = get_format("spqr").pack(qw)
    assert packed["qweight"].tolist() == [[0x5CD]]
    assert packed["outlier_row_ptr"].tolist() == [0, 1] and packed["outlier_col"].tolist() == [2]
    assert get_format("spqr").unpack(packed, 4).tolist() == [[0.25, -0.75, 9.5, -0.5]]


def test_fits_24_matches_a_brute_force_over_every_n_of_m_mask():
    """Whether every N:M mask keeps at most 2 in each aligned group of 4: enumerated mask by mask over lcm(4, M)
    columns (an independent count, not the rule ``fits_24`` encodes)."""
    import itertools
    import math

    from llmprune.formats import fits_24
    from llmprune.recipe import NM, Unstructured

    for m in (2, 3, 4, 6, 8):
        for n in range(1, m):
            span = math.lcm(4, m)
            worst = 0
            for windows in itertools.product(itertools.combinations(range(m), n), repeat=span // m):
                kept = {w * m + i for w, chosen in enumerate(windows) for i in chosen}
                worst = max(worst, *(len(kept & set(range(q, q + 4))) for q in range(0, span, 4)))
            assert fits_24(NM(n, m)) == (worst <= 2), (n, m, worst)
    assert not fits_24(Unstructured(0.5)) and not fits_24(None)
