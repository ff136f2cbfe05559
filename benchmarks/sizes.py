"""Bytes on disk and in memory per packed format vs dense fp16, next to the bytes the layout implies.

Two settings (random weights: sizes do not depend on values, only on shapes and sparsity patterns):
- SmolLM2-135M: every decoder Linear packed, the rest (embeddings, norms) fp16; a full ``checkpoint.save``, so disk
  bytes include safetensors headers, config and manifest.
- A Llama-2-7B-shaped layer set: one decoder layer's seven Linears (q/k/v/o 4096x4096, gate/up 11008x4096, down
  4096x11008; each distinct shape packed once) written to safetensors, x 32 layers (decoder Linears only; embeddings excluded).

Format settings: int4 and sparse24_int4 g128 (g64 where 128 does not divide the inputs: SmolLM2's 576); group_sparse_int4 g16 with half the groups kept (GQSA's 50%);
spqr 3-bit g16 with 3-bit statistics in groups of 16 rows and 1% outliers; 2:4 patterns exactly 2 of every 4.
Run: ``flock /tmp/llmprune-cpu.lock python benchmarks/sizes.py`` -> benchmarks/results/sizes.md.
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

from llmprune.formats import get_format
from llmprune.types import QuantizedWeight

FORMATS = ["dense", "int4", "sparse24", "sparse24_int4", "group_sparse_int4", "spqr"]
LLAMA7B_LAYER = {"q_proj": (4096, 4096), "k_proj": (4096, 4096), "v_proj": (4096, 4096), "o_proj": (4096, 4096),
                 "gate_proj": (11008, 4096), "up_proj": (11008, 4096), "down_proj": (4096, 11008)}
OUTLIER_FRAC = 0.01


def quant_group(fmt: str, in_f: int) -> int:
    """g16 for the small-group formats; g128 otherwise, g64 where 128 does not divide (SmolLM2's 576 inputs)."""
    if fmt in ("group_sparse_int4", "spqr"):
        return 16
    return 128 if in_f % 128 == 0 else 64


def theoretical(fmt: str, out_f: int, in_f: int) -> float:
    """Bytes the layout implies (docs/FORMATS.md), fp16 scales/values."""
    if fmt == "dense":
        return 2 * out_f * in_f
    if fmt == "int4":
        return out_f * in_f / 2 + 3 * out_f * in_f / quant_group(fmt, in_f)
    if fmt == "sparse24":
        return out_f * in_f + out_f * in_f / 8
    if fmt == "sparse24_int4":
        return out_f * in_f / 4 + out_f * in_f / 8 + 3 * out_f * in_f / quant_group(fmt, in_f)
    if fmt == "group_sparse_int4":
        kept = in_f // 16 // 2
        return out_f * kept * (2 + 8 + 3)
    groups, blocks, nnz = in_f // 16, -(-out_f // 16), round(OUTLIER_FRAC * out_f * in_f)
    return (4 * out_f * -(-in_f * 3 // 32) + 2 * out_f * groups + 8 * blocks * groups + 4 * (out_f + 1)
            + 4 * nnz + 2)


def source(fmt: str, out_f: int, in_f: int, gen: torch.Generator):
    """A random weight / QuantizedWeight with the format's sparsity pattern."""
    if fmt == "dense":
        return torch.randn(out_f, in_f, generator=gen, dtype=torch.float16)
    if fmt == "sparse24":
        return torch.randn(out_f, in_f, generator=gen, dtype=torch.float16) * _mask24(out_f, in_f, gen)
    group = quant_group(fmt, in_f)
    groups = in_f // group
    codes = torch.randint(1, 16, (out_f, in_f), generator=gen, dtype=torch.uint8)
    scales, zeros = torch.rand(out_f, groups, generator=gen) + 0.01, torch.zeros(out_f, groups)
    mask = None
    if fmt == "sparse24_int4":
        mask = _mask24(out_f, in_f, gen)
    elif fmt == "group_sparse_int4":
        order = torch.rand(out_f, groups, generator=gen).argsort(dim=1)
        live = torch.zeros(out_f, groups, dtype=torch.bool).scatter(1, order[:, : groups // 2], True)
        mask = live.repeat_interleave(group, dim=1)
    if mask is not None:
        codes = codes * mask
    if fmt == "spqr":
        return _spqr(out_f, in_f, gen)
    return QuantizedWeight(codes, scales, zeros, 4, group, False, mask)


def _mask24(out_f: int, in_f: int, gen: torch.Generator) -> torch.Tensor:
    order = torch.rand(out_f, in_f // 4, 4, generator=gen).argsort(dim=-1)
    return torch.zeros(out_f, in_f // 4, 4, dtype=torch.bool).scatter(-1, order[..., :2], True).reshape(out_f, in_f)


def _spqr(out_f: int, in_f: int, gen: torch.Generator) -> QuantizedWeight:
    groups, blocks = in_f // 16, -(-out_f // 16)
    extra = {"scale_codes": torch.randint(0, 8, (out_f, groups), generator=gen, dtype=torch.uint8),
             "zero_codes": torch.randint(0, 8, (out_f, groups), generator=gen, dtype=torch.uint8),
             **{k: torch.rand(blocks, groups, generator=gen) for k in ("scale_scale", "scale_zero", "zero_scale",
                                                                        "zero_zero")},
             "stat_bits": 3, "stat_group": 16}
    nnz = round(OUTLIER_FRAC * out_f * in_f)
    flat = torch.randperm(out_f * in_f, generator=gen)[:nnz].sort().values
    rows, cols = flat // in_f, flat % in_f
    row_ptr = torch.cat([torch.zeros(1, dtype=torch.int64), torch.bincount(rows, minlength=out_f).cumsum(0)])
    codes = torch.randint(0, 8, (out_f, in_f), generator=gen, dtype=torch.uint8)
    zeros = torch.zeros(out_f, groups)
    return QuantizedWeight(codes, zeros + 1, zeros, 3, 16, False, None,
                           (row_ptr, cols.to(torch.int32), torch.randn(nnz, generator=gen).half()), extra)


def packed_sizes(fmt: str, out_f: int, in_f: int, directory: Path) -> tuple[int, int]:
    """(bytes in memory, bytes of a safetensors file holding the layer)."""
    from safetensors.torch import save_file

    packed = get_format(fmt).pack(source(fmt, out_f, in_f, torch.Generator().manual_seed(0)), dtype="float16")
    memory = sum(t.numel() * t.element_size() for t in packed.values())
    path = directory / f"{fmt}.safetensors"
    save_file(packed, str(path))
    return memory, path.stat().st_size


def llama7b_rows(directory: Path) -> list[str]:
    rows = []
    dense = 32 * sum(theoretical("dense", o, i) for o, i in LLAMA7B_LAYER.values())
    for fmt in FORMATS:
        mem = disk = theo = 0
        measured = {shape: packed_sizes(fmt, *shape, directory) for shape in set(LLAMA7B_LAYER.values())}
        for out_f, in_f in LLAMA7B_LAYER.values():
            m, d = measured[(out_f, in_f)]
            mem, disk, theo = mem + m, disk + d, theo + theoretical(fmt, out_f, in_f)
        params = 32 * sum(o * i for o, i in LLAMA7B_LAYER.values())
        rows.append(_row(fmt, 32 * disk, 32 * mem, 32 * theo, dense, params))
        print(rows[-1], flush=True)
    return rows


def _row(fmt, disk, mem, theo, dense, params) -> str:
    gb = 1e9
    return (f"| {fmt} | {disk / gb:.3f} | {mem / gb:.3f} | {theo / gb:.3f} | {8 * mem / params:.2f} | "
            f"{dense / mem:.2f}x |")


def smollm2_rows(directory: Path) -> list[str]:
    from llmprune import checkpoint
    from llmprune.model import decoder_layers, linears, resolve
    from llmprune.packed_linear import pack_layer

    model = resolve("smollm2-135m").model.half()
    blocks, path = decoder_layers(model)
    shapes = {f"{path}.{i}.{rel}": tuple(lin.weight.shape) for i, b in enumerate(blocks) for rel, lin in linears(b).items()}
    params = sum(o * i for o, i in shapes.values())
    rest = sum(t.numel() * 2 for k, t in model.state_dict().items() if k.rpartition(".")[0] not in shapes) \
        - model.lm_head.weight.numel() * 2  # lm_head is tied to the embeddings: stored once
    dense_total = rest + sum(2 * o * i for o, i in shapes.values())
    rows = []
    for fmt in FORMATS:
        gen = torch.Generator().manual_seed(0)
        once = {shape: pack_layer(fmt, fmt, source(fmt, *shape, gen)) for shape in set(shapes.values())}
        layers = {n: (fmt, {k: t.clone() for k, t in once[s][1].items()}, once[s][2]) for n, s in shapes.items()}
        out = checkpoint.save(model, directory / fmt, layers=layers)
        disk = sum(p.stat().st_size for p in out.iterdir())
        mem = rest + sum(sum(t.numel() * t.element_size() for t in packed.values()) for _, packed, _ in layers.values())
        theo = rest + sum(theoretical(fmt, o, i) for o, i in shapes.values())
        rows.append(_row(fmt, disk, mem, theo, dense_total, params).replace(f"| {8 * mem / params:.2f} |",
                                                                           f"| {8 * (mem - rest) / params:.2f} |"))
        print(rows[-1], flush=True)
    return rows


HEADER = ("| format | disk GB | memory GB | layout GB | bits/weight (Linears) | vs dense fp16 (memory) |\n"
          "|---|---|---|---|---|---|")


def main(out: Path = Path(__file__).parent / "results" / "sizes.md") -> None:
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        smol = smollm2_rows(Path(tmp) / "smol")
        big = llama7b_rows(Path(tmp))
    text = "\n".join([
        "# Packed sizes (benchmarks/sizes.py)", "",
        "Random weights (sizes depend only on shapes and patterns). int4 / sparse24_int4: g128 (g64 for SmolLM2's "
        "576-input layers); group_sparse_int4: "
        "g16, 50% of groups kept; spqr: 3-bit g16, 3-bit stats over 16 rows, 1% outliers; fp16 scales/values. "
        "'layout GB' is the size the layout in docs/FORMATS.md implies; 'disk' adds safetensors headers (and for "
        "SmolLM2 config, tokenizer-free manifest). GB = 1e9 bytes.", "",
        "## SmolLM2-135M (whole model: decoder Linears packed, embeddings/norms fp16, tied lm_head stored once)", "",
        HEADER, *smol, "",
        "## Llama-2-7B-shaped decoder Linears (7 per layer x 32 layers; one layer measured x 32)", "",
        HEADER, *big, "", f"Generated in {time.time() - t0:.0f} s with torch {torch.__version__}.", ""])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main(*[Path(a) for a in sys.argv[1:]])
