"""``Report.quantized``: every quantized Linear's codes, held from the moment a layer is quantized until the run is
packed and saved, in a lossless compact form on the CPU.

Why: as a ``QuantizedWeight`` a layer is a uint8 code and a bool mask entry per weight plus float32 group statistics,
about 2.1 bytes per weight (2.5 with groups of 16), half a float32 model once every layer is done; the 1.1B
benchmark's quantizing runs peaked at 1.9x the model for it (benchmarks/results/scale_1b.md). Held here, codes of at
most 4 bits take a nibble, the mask a bit, and the statistics the narrowest dtype that gives back the same float32
bits (the quantizers round scales to the 16-bit storage dtype, and uniform zero points are whole numbers): about
0.6-0.9 bytes per weight. And a run on ``--device cuda`` no longer keeps every layer's codes on the GPU.

Reading an entry rebuilds the ``QuantizedWeight`` exactly (same dtypes, same values, on the CPU); the dict-like
interface is unchanged for the packers and the export, which read one layer at a time.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from .formats.bits import pack_bitmask, pack_nibbles, unpack_bitmask, unpack_nibbles
from .types import QuantizedWeight

NARROWER = (torch.uint8, torch.float16, torch.bfloat16)  # tried in this order; the first exact one is kept


@dataclass(frozen=True)
class _Held:
    """One tensor in its compact form and what restores it."""
    data: Tensor
    shape: tuple[int, ...]
    dtype: torch.dtype
    packing: str  # "nibbles", "bits" or "narrowed"

    def restore(self) -> Tensor:
        n = math.prod(self.shape)
        if self.packing == "nibbles":
            flat = unpack_nibbles(self.data)[:n]
        elif self.packing == "bits":
            flat = unpack_bitmask(self.data, n)
        else:  # a copy even when nothing was narrowed: a reader may write what it gets
            flat = self.data.clone() if self.data.dtype == self.dtype else self.data
        return flat.to(self.dtype).reshape(self.shape)


def _nibbles(codes: Tensor) -> _Held:
    flat = codes.detach().to("cpu").flatten()
    return _Held(pack_nibbles(torch.nn.functional.pad(flat, (0, flat.numel() % 2))), tuple(codes.shape),
                 codes.dtype, "nibbles")


def _bits(mask: Tensor) -> _Held:
    return _Held(pack_bitmask(mask.detach().to("cpu")), tuple(mask.shape), mask.dtype, "bits")


def _narrowed(t: Tensor) -> _Held:
    """``t`` in the first of NARROWER that holds its values exactly, else as it is (on the CPU)."""
    t = t.detach().to("cpu")
    for dtype in NARROWER:
        if t.dtype.itemsize <= dtype.itemsize:
            break
        if dtype == torch.uint8 and (t.is_floating_point() and t.numel() and
                                     not (float(t.min()) >= 0 and float(t.max()) <= 255)):
            continue
        narrow = t.to(dtype)
        if _same_bits(narrow.to(t.dtype), t):
            return _Held(narrow, tuple(t.shape), t.dtype, "narrowed")
    return _Held(t, tuple(t.shape), t.dtype, "narrowed")


def _same_bits(a: Tensor, b: Tensor) -> bool:
    """Bit for bit: -0.0 is not 0.0 and a NaN's payload counts (``torch.equal`` says neither)."""
    if a.is_floating_point():
        as_int = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
        a, b = a.contiguous().view(as_int), b.contiguous().view(as_int)
    return torch.equal(a, b)


def hold(qw: QuantizedWeight) -> QuantizedWeight:
    """``qw`` with its four large tensors replaced by their compact forms (``restore`` undoes it)."""
    small = qw.bits <= 4 and qw.codes.dtype == torch.uint8
    return replace(qw, codes=_nibbles(qw.codes) if small else _narrowed(qw.codes),
                   mask=None if qw.mask is None else _bits(qw.mask), scales=_narrowed(qw.scales),
                   zeros=_narrowed(qw.zeros),
                   outliers=None if qw.outliers is None else tuple(t.detach().to("cpu") for t in qw.outliers),
                   extra={k: v.detach().to("cpu") if isinstance(v, Tensor) else v for k, v in qw.extra.items()})


def restore(held: QuantizedWeight) -> QuantizedWeight:
    """The ``QuantizedWeight`` ``hold`` was given, in new tensors (writing them leaves the held form as it was)."""
    return replace(held, codes=held.codes.restore(), mask=None if held.mask is None else held.mask.restore(),
                   scales=held.scales.restore(), zeros=held.zeros.restore(),
                   outliers=None if held.outliers is None else tuple(t.clone() for t in held.outliers),
                   extra={k: v.clone() if isinstance(v, Tensor) else v for k, v in held.extra.items()})


class QuantizedStore(MutableMapping):
    """``{Linear name: QuantizedWeight}``, each held compact; reads rebuild it (one layer's worth at a time)."""

    def __init__(self, items=()):
        self._held: dict[str, QuantizedWeight] = {}
        self.update(items)

    def __setitem__(self, name: str, qw: QuantizedWeight) -> None:
        self._held[name] = hold(qw)

    def __getitem__(self, name: str) -> QuantizedWeight:
        return restore(self._held[name])

    def __delitem__(self, name: str) -> None:
        del self._held[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._held)

    def __len__(self) -> int:
        return len(self._held)

    def nbytes(self) -> int:
        """Bytes the held tensors take (the benchmark and the tests read it)."""
        total = 0
        for held in self._held.values():
            for part in (held.codes, held.mask, held.scales, held.zeros):
                total += 0 if part is None else part.data.numel() * part.data.element_size()
        return total

    def __repr__(self) -> str:
        return f"QuantizedStore({len(self)} layers, {self.nbytes() / 2**20:.1f} MiB held)"
