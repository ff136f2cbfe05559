"""The layer-wise engine: capture the decoder layers' inputs, gather per-Linear statistics, compress, propagate."""
from .capture import Captured, LayerCall, capture_inputs
from .sequential import run_sequential_, run_without_calibration_
from .stats import STAT_NAMES, InputStats, StatsCollector

__all__ = ["Captured", "LayerCall", "capture_inputs", "run_sequential_", "run_without_calibration_", "STAT_NAMES",
           "InputStats", "StatsCollector"]
