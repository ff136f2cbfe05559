"""Timing hygiene for benchmarks/kernels.py (issue 6): median GPU time of CUDA-graph replays with the 50 MB L2
flushed before every repetition, and the device-to-device copy bandwidth that serves as the roofline."""
from __future__ import annotations

import statistics
import sys

import torch


class Timer:
    """Median GPU time (µs) of a CUDA-graph replay, the L2 flushed before each repetition."""

    def __init__(self):
        self.flush = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")

    def __call__(self, fn, reps: int = 50) -> tuple[float, bool]:
        fn()  # compile + autotune outside the graph
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn()
        torch.cuda.current_stream().wait_stream(side)
        graph, run = torch.cuda.CUDAGraph(), fn
        try:
            with torch.cuda.graph(graph):
                fn()
            run = graph.replay
        except RuntimeError:
            torch.cuda.synchronize()
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
        for start, end in events:
            self.flush.zero_()
            start.record()
            run()
            end.record()
        torch.cuda.synchronize()
        return statistics.median(s.elapsed_time(e) * 1e3 for s, e in events), run is not fn


def copy_bandwidth(timer: Timer) -> float:
    """Device-to-device copy GB/s (read + write bytes) of a 512 MB buffer: the bandwidth roofline."""
    src = torch.randint(0, 255, (512 << 20,), dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    us, _ = timer(lambda: dst.copy_(src), reps=20)
    return 2 * src.numel() / us / 1e3


def try_time(timer, fn):
    try:
        return timer(fn)[0]
    except (RuntimeError, NotImplementedError) as exc:
        print(f"semi-structured path unavailable: {str(exc).splitlines()[0]}", file=sys.stderr)
        return None
