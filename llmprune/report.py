"""What a compression run did, per Linear: the records the manifest, the model card and the CLI summary read."""
from __future__ import annotations

from dataclasses import dataclass, field

from .layer_records import weighted_mean
from .quantized_store import QuantizedStore


@dataclass
class Report:
    """What a compression run did: per-Linear records, the quantized representations, timings."""

    records: dict[str, dict] = field(default_factory=dict)
    quantized: QuantizedStore = field(default_factory=QuantizedStore)  # {name: QuantizedWeight}, held compact
    timings: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # module -> reason (ignored by the recipe)
    filled: list[str] = field(default_factory=list)  # pruned earlier, filled in by a dense-only quantizer

    def achieved_sparsity(self) -> float:
        zeros = sum(r["zeros"] for r in self.records.values())
        total = sum(r["numel"] for r in self.records.values())
        return zeros / total if total else 0.0

    def uncalibrated(self) -> list[str]:
        """Linears that needed statistics but saw no calibration token (experts the router never chose)."""
        return [name for name, r in self.records.items() if r.get("uncalibrated")]

    def bits_per_param(self) -> float | None:
        """Average bits/parameter of the quantized Linears by the quantizers' accounting (``quant/bits_per_param``):
        what the quantized representation needs, whatever ``--format`` stores; None without ``--quant``."""
        return weighted_mean(self.records, "bits_per_param")

    def outlier_fraction(self) -> float | None:
        """SpQR: fraction of weights kept as 16-bit outliers over the quantized Linears."""
        return weighted_mean(self.records, "outlier_fraction")

    def to_dict(self) -> dict:
        summary = {"bits_per_param": self.bits_per_param(), "outlier_fraction": self.outlier_fraction()}
        return {"achieved_sparsity": self.achieved_sparsity(),
                **{k: v for k, v in summary.items() if v is not None},
                "layers": self.records, "skipped": self.skipped, "timings": self.timings}
