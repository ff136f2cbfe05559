"""Packed weight formats: one file per format, one ``Format`` record each, registered in ``FORMATS``.

Each format file defines ``tensor_specs(out_features, in_features, **params)`` (names/shapes/dtypes: the manifest check
and the meta skeleton), ``pack(qw_or_weight, **params)``, ``unpack(packed)`` (the exact dense weight), ``matmul_ref(x,
packed)`` (plain torch, any device: the oracle the Triton kernels are tested against), ``check(out, in, **params)``
(one-line ``UserInputError`` before any work) and ``params(packed, in_features)`` (the JSON-able parameters a packed
layer was made with, so ``tensor_specs(out, in, **params(packed, in))`` describes ``packed`` exactly). ``unpack`` takes
``in_features`` too: group_sparse_int4 and spqr cannot infer the dense width from their tensors. Layouts:
docs/FORMATS.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import UserInputError
from ..registry import Registry

FORMATS = Registry("format")

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "uint8": torch.uint8,
          "int16": torch.int16, "int32": torch.int32}
FLOAT_DTYPES = ("float16", "bfloat16", "float32")


@dataclass(frozen=True)
class Spec:
    """Shape and dtype of one packed tensor."""

    shape: tuple[int, ...]
    dtype: torch.dtype

    def to_dict(self) -> dict:
        return {"shape": list(self.shape), "dtype": dtype_name(self.dtype)}


@dataclass(frozen=True)
class Format:
    """A packed format as frozen data; ``kernel`` names the module in ``llmprune.kernels`` (None: reference only)."""

    name: str
    tensor_specs: Callable
    pack: Callable
    unpack: Callable
    matmul_ref: Callable
    check: Callable
    params: Callable
    kernel: str | None = None
    quantized: bool = True  # pack takes a QuantizedWeight (False: a dense/pruned weight)
    spec_params: Callable | None = None  # (QuantSpec | None, in_features) -> the params ``check`` takes
    # (packed list, in_features) -> one packed weight of their rows in order, for formats whose tensors do not all
    # simply concatenate along rows (``stack_rows`` below; merged projections, llmprune/merged_projections.py)
    stack_rows: Callable | None = None


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def float_dtype(name) -> torch.dtype:
    """The storage dtype for values/scales ('float16', 'bfloat16', 'float32' or a torch dtype)."""
    if isinstance(name, torch.dtype):
        name = dtype_name(name)
    if name not in FLOAT_DTYPES:
        raise UserInputError(f"storage dtype '{name}' is not supported; choose one of {', '.join(FLOAT_DTYPES)}")
    return DTYPES[name]


def stack_rows(format: str, packeds: list[dict[str, torch.Tensor]], in_features: int) -> dict[str, torch.Tensor]:
    """One packed weight whose output rows are those of ``packeds``, in order: ``W = cat(W_i)``. Every tensor of a
    row-major layout (docs/FORMATS.md) concatenates along its first dimension, unless the format brings its own
    ``stack_rows`` (spqr: shared code widths, a shifted outlier CSR). One-line ``UserInputError`` when the parts were
    packed with different parameters (group size, kept groups, storage dtype), which no single layout holds."""
    fmt = get_format(format)
    if fmt.stack_rows is not None:
        return fmt.stack_rows(packeds, in_features)
    same_params(fmt, packeds, in_features)
    return {name: torch.cat([p[name] for p in packeds]) for name in packeds[0]}


def same_params(fmt: Format, packeds: list[dict], in_features: int, ignore: tuple[str, ...] = ()) -> None:
    """``UserInputError`` unless all of ``packeds`` have the same ``params`` (keys in ``ignore`` aside)."""
    params = [{k: v for k, v in fmt.params(p, in_features).items() if k not in ignore} for p in packeds]
    for other in params[1:]:
        if other != params[0]:
            raise UserInputError(f"{fmt.name} layers packed with {params[0]} and {other} cannot share one weight; "
                                 "compress them with the same recipe")


def get_format(name: str) -> Format:
    """The ``Format`` record for ``name`` (``UserInputError`` with a "did you mean" hint when unknown)."""
    return FORMATS.get(name).fn


def check_layer(format: str, name: str, out_features: int, in_features: int, quant=None, sparsity=None) -> None:
    """Refuse a layer the format cannot store, before any calibration; the one-line error names the layer.

    ``quant`` is the recipe's ``QuantSpec`` (None: no quantization), ``sparsity`` its ``Sparsity`` (None: dense).
    """
    fmt = get_format(format)
    _check_pattern(format, name, quant, sparsity, in_features)
    params = fmt.spec_params(quant, in_features) if fmt.spec_params else {}
    try:
        fmt.check(out_features, in_features, **params)
    except UserInputError as exc:
        raise UserInputError(f"{name}: {exc}") from None


def check_recipe(format: str, recipe) -> None:
    """``check_layer``'s checks that need no layer shape, for the recipe's sparsity and each override's: before the
    model is even loaded (a batch spec, a compress job). Expects GQSA's fractions already resolved to groups
    (``compress.check_format``)."""
    for where, sparsity in [("the recipe", recipe.sparsity), *((f"--override {pattern}", sparsity)
                                                               for pattern, sparsity in recipe.overrides)]:
        _check_pattern(format, where, recipe.quant, sparsity, None)


def _check_pattern(format: str, name: str, quant, sparsity, in_features: int | None) -> None:
    """What the format demands of the recipe: quantized codes, a 2:4-storable pattern, groups matching the quant
    group (``in_features`` None: a per-row quant group is not known yet, so not checked)."""
    quantized = get_format(format).quantized
    if quantized and quant is None:
        raise needs_quant(format, name)
    spqr_codes = quant is not None and quant.method == "spqr"
    if format == "spqr" and not spqr_codes:
        raise UserInputError(f"{name}: --format spqr stores SpQR's bilevel statistics and outliers, which only the "
                             f"spqr quantizer makes; add --quantizer spqr (e.g. --quant w3g16 --quantizer spqr)")
    if spqr_codes and format != "spqr" and quantized:
        raise UserInputError(f"{name}: --format {format} cannot hold SpQR's unrounded zero points and outliers; use "
                             f"--format spqr (or dense)")
    if format in ("sparse24", "sparse24_int4") and not fits_24(sparsity):
        again = "" if sparsity else "; a model pruned 2:4 earlier keeps its mask with --method magnitude"
        raise UserInputError(f"{name}: --format {format} stores at most 2 of every 4 weights; prune with "
                             f"--sparsity 2:4 (the sparsity here is {sparsity or 'none'}{again})")
    group = getattr(sparsity, "size", None)
    quant_group = (quant.group if quant is not None else 0) or in_features
    if format == "group_sparse_int4" and (group is None or (quant_group is not None and quant_group != group)):
        raise UserInputError(f"{name}: --format group_sparse_int4 needs group sparsity with the quantization group "
                             f"(e.g. --sparsity 0.5@g16 --quant w4g16)")


def needs_quant(format: str, where: str | None = None) -> UserInputError:
    """The error for a quantized format given unquantized weights, with the flags that format wants (SpQR's own
    quantizer, GQSA's matching groups; 64-wide groups divide more models' layers than 128: SmolLM2's 576)."""
    hint = {"spqr": "--quant w3g16 --quantizer spqr",
            "group_sparse_int4": "--quant w4g16 with --method gqsa --sparsity 0.5@g16"}.get(format, "--quant w4g64")
    return UserInputError(f"{where + ': ' if where else ''}--format {format} stores quantized weights; add --quant "
                          f"(e.g. {hint})")


def fits_24(sparsity) -> bool:
    """Whether every N:M mask keeps at most 2 weights in each aligned group of 4 (2:4, 1:4, 1:3, 2:8 do; 4:8 and
    2:3 may not), so that every pruned layer can be stored as 2:4. Worst case per group of 4: each window of M it
    overlaps may put min(N, overlap) of its kept weights there."""
    n, m = getattr(sparsity, "n", None), getattr(sparsity, "m", None)
    if n is None or m is None:
        return False
    span = math.lcm(4, m)
    return all(sum(min(n, min(q + 4, w + m) - max(q, w)) for w in range(0, span, m) if w < q + 4 and q < w + m) <= 2
               for q in range(0, span, 4))


def shape_error(what: str, out_features: int, in_features: int, fix: str) -> UserInputError:
    return UserInputError(f"a {out_features}x{in_features} Linear cannot be stored as {what}; {fix}")


from . import dense, int4, sparse24, sparse24_int4, group_sparse_int4, spqr  # noqa: E402,F401  (registration)

__all__ = ["FORMATS", "Format", "Spec", "get_format", "check_layer", "check_recipe", "float_dtype", "dtype_name"]
