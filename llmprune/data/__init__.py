"""Calibration and evaluation text: named sources and local files (``sources``), seeded calibration windows
(``calibration``), and model-generated windows for data-free calibration (``selfgen``).

Nothing heavy is imported here: ``datasets`` is imported only when a source must come from the Hub.
"""
from .calibration import CalibrationSet, calibration_windows, windows_sha256
from .sources import TextSource, load_file, load_named

__all__ = ["CalibrationSet", "calibration_windows", "windows_sha256", "TextSource", "load_file", "load_named"]
