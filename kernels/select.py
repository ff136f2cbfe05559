"""Which matmul path a packed format takes on CUDA for a given number of tokens (the dispatch table).

Regimes, per call of ``<fmt>_matmul(x, packed)`` with M = tokens (rows of x):
- ``gemv``  — the decode kernel: row blocks of W streamed once against M <= ``gemv_up_to`` tokens (FMAs, or one
  padded tl.dot for 5-16 tokens; at 2-4 tokens the autotuner times both blocks, ``_configs.decode_blocks``).
  Memory-bound: its ideal speedup over fp16 is the format's byte ratio.
- ``gemm``  — the prefill kernel: tl.dot on tiles dequantized in registers (17-63 tokens).
- ``dense`` — dequantize the whole weight once per call with the format's Triton dequantize kernel into a temporary
  ``[N, K]`` buffer, then the library GEMM (cuBLAS). At large M the GEMM's O(M·N·K) work dwarfs the O(N·K)
  dequantization, and cuBLAS beats a Triton GEMM that also dequantizes. Measured on H100: 0.86-0.97x of dense at
  4096 tokens (group_sparse_int4 0.52-0.64x: its dequantization then scattered 2-byte stores; it now writes
  dense tiles, unmeasured), but only 0.53-0.60x at 512, where writing the dense temporary (~45 us for 11008x4096)
  costs as much as the GEMM itself — issue 6's "within 10% of dense from 512 tokens" is not met; a fused GEMM with
  Marlin-style pre-shuffled codes would be needed.
- ``chunked`` — ``dense`` in L2-sized slices, each slice's dequantization overlapping the previous slice's GEMM on a
  second stream (kernels/chunked.py). Not chosen automatically until a GPU run measures it against ``dense``.
- ``semi_structured`` — for ``sparse24`` only, PyTorch's sparse tensor cores (kernels/sparse24.py); it needs the
  weight converted once and kept by the caller (``packed["semi_structured"]``: it takes as much memory again as the
  packed weight, so it is opt-in); when present, ``sparse24_matmul`` takes it from the table's ``semi_from`` tokens.
  Measured on the H100 (median over six shapes of its time / sparse24's own path): 1.13 at batch 1, 0.68 at 4,
  0.48 at 16, 0.55 at 64 and 512, 0.65 at 4096, so the shipped table says 4 (tables without the entry: 512).

Measured on an H100 (benchmarks/results/gpu/, 2026-11-23): gemv up to 16 tokens, gemm below 64, dense from 64 — at
64 tokens dequantize + cuBLAS already beats our Triton GEMM for every format (median gemm/dense time 1.10 int4, 1.10
sparse24, 1.71 sparse24_int4, 1.52 group_sparse_int4), and the gap grows with the batch. spqr goes to dense from
17 tokens: its GEMM kernel then rebuilt six statistics and a 3-bit stream code by code and spilled registers in every
config on sm_90; measured 25x slower than dense at 512 tokens. It now builds tiles from whole-word code blocks
(``spqr._spqr_word_tile``, no spills in the 16-32 row configs), unmeasured: the threshold stays until a GPU run moves
it.
These crossovers predate the decode rework measured only statically so far (benchmarks/results/instruction_mix/:
fewer instructions per byte at 1-4 tokens); re-measure them on the next GPU run. One entry is not a measurement:
group_sparse_int4's decode limit was 4 because its decode kernel then had no tl.dot block for 5-16 tokens; it now
has int4's (split-K, wide rows), whose measured limit of 16 it takes until a run times it.

Per device: the crossovers live in JSON tables named after the GPU (``torch.cuda.get_device_name`` with spaces as
dashes). ``benchmarks/kernels.py --bench`` measures all three (decode vs prefill kernel from forced timings at 4 and
16 tokens, prefill vs dense and chunked vs dense from 64), writes a table next to its report
(``<report>.crossovers.json``) and, with ``--install``, into ``$LLMPRUNE_CACHE_DIR/crossovers/``, which takes
precedence over the tables shipped in ``kernels/crossovers/``; a GPU with neither uses the H100's (``DEFAULT_GPU``),
as do CPU tensors.
"""
from __future__ import annotations

import functools
import json
import statistics
from dataclasses import dataclass
from pathlib import Path

import torch

from llmprune.errors import UserInputError
from llmprune.kernels import FORMATS_WITH_KERNELS
from llmprune.settings import cache_dir

REGIMES = ("gemv", "gemm", "dense", "chunked")
SEMI_FROM = 512  # tables written before semi_from was measured: the old a-priori threshold
DEFAULT_GPU = "NVIDIA-H100-80GB-HBM3"
SHIPPED = Path(__file__).with_name("crossovers")


@dataclass(frozen=True)
class Rules:
    """One GPU's crossovers, per format: decode kernel up to ``gemv_up_to`` tokens, prefill kernel below
    ``dense_from``, then dequantize + cuBLAS, in slices (``chunked``) from ``chunked_from`` where that was faster;
    for ``sparse24`` given a semi-structured weight, that weight from ``semi_from`` tokens (None: never)."""

    gpu: str
    source: str  # the file the numbers came from
    gemv_up_to: dict[str, int]
    dense_from: dict[str, int | None]  # None: the prefill kernel won at every measured batch
    chunked_from: dict[str, int | None]  # None: whole-weight dequantization was never slower
    semi_from: int | None = SEMI_FROM

    def choose(self, fmt: str, tokens: int) -> str:
        if tokens <= self.gemv_up_to[fmt]:
            return "gemv"
        dense = self.dense_from[fmt]
        if dense is None or tokens < dense:
            return "gemm"
        start = self.chunked_from.get(fmt)
        return "chunked" if start is not None and tokens >= start else "dense"

    def describe(self) -> list[str]:
        """One line per format, for benchmark reports."""
        lines = []
        for fmt, gemv in self.gemv_up_to.items():
            dense, chunked = self.dense_from[fmt], self.chunked_from.get(fmt)
            large = f" < {dense} <= dense" + (f" < {chunked} <= chunked" if chunked else "") if dense else ""
            lines.append(f"- {fmt}: gemv <= {gemv} < gemm{large}")
        return lines + [f"- sparse24 with a semi-structured weight: that weight from {self.semi_from} tokens"
                        if self.semi_from else "- sparse24: the semi-structured weight never won"]

    def to_json(self) -> str:
        body = {"gpu": self.gpu, "gemv_up_to": self.gemv_up_to, "dense_from": self.dense_from,
                "chunked_from": self.chunked_from, "semi_from": self.semi_from}
        return json.dumps(body, indent=1, sort_keys=True) + "\n"


def device_slug(name: str) -> str:
    return name.strip().replace(" ", "-")


def read_rules(path: Path) -> Rules:
    """A table written by ``benchmarks/kernels.py``; a malformed one is a one-line error naming the file."""
    try:
        body = json.loads(path.read_text())
        gemv, dense = body["gemv_up_to"], body["dense_from"]
        chunked, semi = body.get("chunked_from", {}), body.get("semi_from", SEMI_FROM)
        counts = (*gemv.values(), *(v for v in (*dense.values(), *chunked.values(), semi) if v is not None))
        if not set(gemv) == set(dense) == set(FORMATS_WITH_KERNELS):
            raise ValueError(f"gemv_up_to and dense_from must name exactly {', '.join(FORMATS_WITH_KERNELS)}")
        if not all(isinstance(v, int) and v > 0 for v in counts):
            raise ValueError("crossovers must be positive token counts (or null)")
        return Rules(str(body["gpu"]), str(path), gemv, dense, {f: chunked.get(f) for f in gemv}, semi)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserInputError(f"crossover table {path} is unreadable ({type(exc).__name__}: {exc}); delete it or "
                             "rewrite it with `python benchmarks/kernels.py --bench --install`") from None


@functools.lru_cache(maxsize=None)
def rules(gpu: str | None = None) -> Rules:
    """The table for GPU ``gpu`` (a device name; None: ``DEFAULT_GPU``): the user's measured one, else the shipped
    one, else the default GPU's."""
    slug = device_slug(gpu or DEFAULT_GPU)
    for folder in (cache_dir() / "crossovers", SHIPPED):
        if (folder / f"{slug}.json").is_file():
            return read_rules(folder / f"{slug}.json")
    return rules(None) if gpu else read_rules(SHIPPED / f"{DEFAULT_GPU}.json")


def device_rules(device: torch.device | None) -> Rules:
    """The rules for the GPU ``device`` is on (the default table for no device and for CPU tensors: the
    interpreter's tests)."""
    if device is None or device.type != "cuda":
        return rules(None)
    return rules(_gpu_name(device.index if device.index is not None else torch.cuda.current_device()))


@functools.lru_cache(maxsize=None)
def _gpu_name(index: int) -> str:
    return torch.cuda.get_device_name(index)


def choose(fmt: str, tokens: int, device: torch.device | None = None) -> str:
    """The regime for ``tokens`` rows of activations on ``device``: 'gemv', 'gemm', 'dense' or 'chunked'."""
    return device_rules(device).choose(fmt, tokens)


# Deriving a table from measured timings (benchmarks/kernels.py --bench writes and --install installs the result).


def wins_from(ratios: dict[int, float]) -> int | None:
    """The smallest measured batch from which a challenger whose time ratio to the incumbent is ``ratios`` (< 1: it
    is faster) wins at that batch and every larger one, so one noisy middle batch cannot flip the regime twice."""
    start = None
    for m in sorted(ratios, reverse=True):
        if ratios[m] >= 1.0:
            break
        start = m
    return start


def decode_limit(ratios: dict[int, float], base: int) -> int:
    """``gemv_up_to`` from the decode kernel's time over the prefill kernel's at the measured batches (``ratios``,
    < 1: decode is faster): the largest batch up to which decode wins at every measured batch; ``base`` (the limit
    in effect) where it lies in the unmeasured gap before the first loss or above a run of wins; below the smallest
    measured batch when decode already loses there (at least 1)."""
    won, lost = None, None
    for m in sorted(ratios):
        if ratios[m] >= 1.0:
            lost = m
            break
        won = m
    if won is None:
        return max(1, min(base, lost - 1))
    if lost is None:
        return max(won, base)
    return base if won < base < lost else won


def measured_rules(records: list[dict], base, gpu: str | None = None):
    """kernels/select.py's table for this GPU from the timings: the decode kernel up to the batch where it stops
    beating the prefill kernel (``decode_limit``, from forced gemv / gemm timings at 4 and 16 tokens), dense
    (dequantize + cuBLAS) from the first batch where it beats the prefill kernel for good, chunked from the first
    where it beats whole-weight dequantization for good, sparse24's semi-structured weight from the first batch
    where it beats sparse24's automatic regime for good. ``base`` (the table in effect) supplies what the run did
    not measure: unmeasured formats and batches, and a lower dense threshold when dense already wins at the
    smallest measured batch (below it nothing was timed). ``gpu``: the measured GPU's name (default: the base
    table's)."""
    decode, dense, chunked = dict(base.gemv_up_to), dict(base.dense_from), dict(base.chunked_from)
    semi_vs_ours = semi_ratios(records)  # < 1: the semi-structured weight is faster than sparse24's own path
    semi = wins_from(semi_vs_ours) if semi_vs_ours else base.semi_from
    for fmt in {r["fmt"] for r in records}:
        gemv_vs_gemm = regime_ratios(records, fmt, "gemv", "gemm")  # < 1: the decode kernel is faster
        if gemv_vs_gemm:
            decode[fmt] = decode_limit(gemv_vs_gemm, base.gemv_up_to[fmt])
        gemm_vs_dense = regime_ratios(records, fmt, "dense", "gemm")  # < 1: dense is faster
        if gemm_vs_dense:
            start = wins_from(gemm_vs_dense)
            low = base.dense_from[fmt]
            dense[fmt] = min(start, low) if start == min(gemm_vs_dense) and low is not None else start
        chunk_vs_dense = regime_ratios(records, fmt, "chunked", "dense")
        if chunk_vs_dense:
            chunked[fmt] = wins_from(chunk_vs_dense)
    return Rules(gpu or base.gpu, "benchmarks/kernels.py", decode, dense, chunked, semi)


def regime_ratios(records: list[dict], fmt: str, regime: str, baseline: str) -> dict[int, float]:
    """{batch: median over shapes and dtypes of the time of ``regime`` / the time of ``baseline``} for one format
    (batches where a forced regime failed on every shape are left out)."""
    times = {(r["m"], r["n"], r["k"], r.get("dtype"), r["regime"]): r["t"] for r in records if r["fmt"] == fmt}
    return _batch_medians((m, t / times[(m, n, k, dt, baseline)]) for (m, n, k, dt, reg), t in times.items()
                          if reg == regime and (m, n, k, dt, baseline) in times)


def semi_ratios(records: list[dict]) -> dict[int, float]:
    """{batch: median over shapes and dtypes of the semi-structured weight's time / sparse24's automatic regime's}
    (records of the automatic regime carry the semi-structured time as ``semi``)."""
    return _batch_medians((r["m"], r["semi"] / r["t"]) for r in records
                          if r["fmt"] == "sparse24" and r["regime"] is None and r.get("semi"))


def _batch_medians(pairs) -> dict[int, float]:
    """{batch: median of its ratios} from (batch, ratio) pairs, batches ascending."""
    by_batch: dict[int, list[float]] = {}
    for m, ratio in pairs:
        by_batch.setdefault(m, []).append(ratio)
    return {m: statistics.median(by_batch[m]) for m in sorted(by_batch)}
