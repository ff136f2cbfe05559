"""Report.quantized holds each layer compact (nibble codes, bit masks, narrowed statistics) and gives back exactly
what it was given: same dtypes, same bits."""
import numpy as np
import pytest
import torch

from llmprune.quantized_store import QuantizedStore
from llmprune.types import QuantizedWeight


def _bits_equal(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape and a.device == b.device
    if a.is_floating_point():
        a, b = a.view(torch.int32), b.view(torch.int32)
    assert torch.equal(a, b)


def _same(back: QuantizedWeight, qw: QuantizedWeight):
    for part in ("codes", "scales", "zeros", "mask"):
        got, want = getattr(back, part), getattr(qw, part)
        assert (got is None) == (want is None), part
        if want is not None:
            _bits_equal(got, want)
    assert (back.bits, back.group, back.symmetric) == (qw.bits, qw.group, qw.symmetric)


def _qw(bits, out_f=7, in_f=33, group=16, mask=True, scales=None, zeros=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    groups = -(-in_f // group)
    codes = torch.randint(0, 2**bits, (out_f, in_f), generator=g, dtype=torch.uint8)
    if scales is None:
        scales = torch.rand(out_f, groups, generator=g).half().float()  # as the quantizers round them
    if zeros is None:
        zeros = torch.randint(0, 2**bits, (out_f, groups), generator=g).float()
    keep = torch.rand(out_f, in_f, generator=g) > 0.5 if mask else None
    return QuantizedWeight(codes, scales, zeros, bits, group, False, mask=keep)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("mask", [True, False])
def test_store_gives_back_the_same_bits(bits, mask):
    qw = _qw(bits, mask=mask)
    store = QuantizedStore()
    store["layer"] = qw
    _same(store["layer"], qw)
    _same(store["layer"], qw)  # reading twice: the held form is not consumed


def test_statistics_narrow_only_when_exact():
    """bfloat16-rounded scales, -0.0, NaN, float zero points (SpQR) and scales no 16-bit type holds all come back
    bit for bit."""
    qw = _qw(4)
    cases = {
        "bfloat16 scales": qw.scales.bfloat16().float(),
        "full float32 scales": torch.rand(qw.scales.shape, dtype=torch.float32) + 1e-7,
        "negative zero": torch.where(qw.scales > 0.5, qw.scales, torch.tensor(-0.0)),
        "nan": torch.where(qw.scales > 0.5, qw.scales, torch.tensor(float("nan"))),
    }
    for label, scales in cases.items():
        variant = QuantizedWeight(qw.codes, scales, qw.scales * 3.3, 4, 16, False, mask=qw.mask)  # float zeros
        _same(QuantizedStore({"x": variant})["x"], variant)
    signed = torch.where(qw.zeros > 7, qw.zeros, torch.tensor(-0.0))  # whole numbers, one of them -0.0: not uint8
    variant = QuantizedWeight(qw.codes, qw.scales, signed, 4, 16, False, mask=qw.mask)
    _same(QuantizedStore({"x": variant})["x"], variant)


def test_mask_and_codes_are_packed_as_numpy_packs_them():
    """An independent oracle for the held bytes: numpy's little-endian packbits for the mask, two codes a byte."""
    qw = _qw(4, out_f=5, in_f=13)  # 65 entries: both paddings used
    store = QuantizedStore({"x": qw})
    held = store._held["x"]
    want_mask = np.packbits(qw.mask.flatten().numpy(), bitorder="little")
    assert np.array_equal(held.mask.data.numpy(), want_mask)
    flat = np.append(qw.codes.flatten().numpy(), 0)
    assert np.array_equal(held.codes.data.numpy(), flat[0::2] | (flat[1::2] << 4))


def test_held_bytes_per_weight():
    """The reason for the store: a 4-bit g128 layer with a 2:4 mask is ~0.64 bytes per weight held, not the 2.06 of
    its QuantizedWeight (uint8 codes, bool mask, float32 statistics)."""
    qw = _qw(4, out_f=256, in_f=512, group=128)
    plain = sum(t.numel() * t.element_size() for t in (qw.codes, qw.mask, qw.scales, qw.zeros))
    store = QuantizedStore({"x": qw})
    assert plain / qw.codes.numel() == pytest.approx(2.0625)
    assert store.nbytes() / qw.codes.numel() == pytest.approx(0.5 + 0.125 + 3 / 128)


def test_outliers_and_extra_pass_through():
    qw = _qw(3)
    outliers = (torch.tensor([0, 1, 1, 2, 2, 2, 2, 3]), torch.tensor([4, 0, 9], dtype=torch.int32),
                torch.tensor([1.5, -2.0, 0.25], dtype=torch.float16))
    spqr = QuantizedWeight(qw.codes, qw.scales, qw.zeros * 0.37, 3, 16, False, outliers=outliers,
                           extra={"scale_codes": torch.arange(5, dtype=torch.uint8), "bits": 3})
    back = QuantizedStore({"s": spqr})["s"]
    _same(back, spqr)
    assert all(torch.equal(a, b) for a, b in zip(back.outliers, outliers))
    assert torch.equal(back.extra["scale_codes"], spqr.extra["scale_codes"]) and back.extra["bits"] == 3
    assert torch.equal(back.dequantize(), spqr.dequantize())


def test_mapping_interface():
    store = QuantizedStore({"a": _qw(4), "b": _qw(4, seed=1)})
    assert list(store) == ["a", "b"] and len(store) == 2 and "a" in store and store.get("c") is None
    del store["a"]
    assert list(store) == ["b"]
    with pytest.raises(KeyError):
        store["a"]


def _compress(device):
    from llmprune import compress_
    from llmprune.recipe import Recipe, parse_quant, parse_sparsity
    from tests.tiny_models import tiny_calibration, tiny_model

    model, _ = tiny_model("llama")
    recipe = Recipe(method="sparsegpt", sparsity=parse_sparsity("2:4"), quant=parse_quant("w4g16"))
    return model, compress_(model, recipe, tiny_calibration(), device=device, progress=False)


def test_a_run_holds_exactly_the_weights_it_wrote():
    """After compress_, each held layer dequantizes to the weight the model now has, and is held compact."""
    from llmprune.model.layers import get_weight

    model, report = _compress("cpu")
    assert set(report.quantized) == set(report.records)
    for name, qw in report.quantized.items():
        assert qw.codes.dtype == torch.uint8 and qw.mask.dtype == torch.bool
        assert torch.equal(qw.dequantize(), get_weight(model.get_submodule(name)).float()), name
    weights = sum(qw.codes.numel() for qw in report.quantized.values())
    assert report.quantized.nbytes() / weights < 0.9  # nibbles + mask bits + 16-bit scales + uint8 zeros at g16


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_cuda_run_keeps_no_codes_on_the_gpu():
    model, report = _compress("cuda")
    held = report.quantized._held.values()
    assert all(part.data.device.type == "cpu" for h in held for part in (h.codes, h.mask, h.scales, h.zeros))
    from llmprune.model.layers import get_weight

    for name, qw in report.quantized.items():
        assert torch.equal(qw.dequantize(), get_weight(model.get_submodule(name)).float()), name


def test_writing_what_was_read_leaves_the_held_layer_as_it_was():
    qw = _qw(8, mask=False, scales=torch.rand(7, 3) + 1e-7)  # 8-bit codes and float32 scales: held as they are
    outliers = (torch.tensor([0, 1, 1, 1, 1, 1, 1, 1]), torch.tensor([2], dtype=torch.int32),
                torch.tensor([0.5], dtype=torch.float16))
    qw = QuantizedWeight(qw.codes, qw.scales, qw.zeros * 0.5, 8, 16, False, outliers=outliers,
                         extra={"t": torch.ones(3)})
    want = QuantizedWeight(qw.codes.clone(), qw.scales.clone(), qw.zeros.clone(), 8, 16, False)
    store = QuantizedStore({"x": qw})
    first = store["x"]
    for t in (first.codes, first.scales, first.zeros, *first.outliers, first.extra["t"]):
        t.zero_()
    _same(store["x"], want)
    assert torch.equal(store["x"].outliers[2], torch.tensor([0.5], dtype=torch.float16))
    assert torch.equal(store["x"].extra["t"], torch.ones(3))
