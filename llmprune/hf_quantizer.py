"""``AutoModelForCausalLM.from_pretrained`` for packed llmprune folders, through transformers' quantizer plug-in point.

Why: users load checkpoints with transformers (pipelines, lm-eval's ``hf`` model, their own scripts). A packed
folder's ``config.json`` carries ``quantization_config = {"quant_method": "llmprune", "layers": ...}``; once
llmprune is imported, transformers builds the model on the meta device, this quantizer swaps the listed Linears for
``PackedLinear`` skeletons, and transformers' own loader fills their buffers from the shards, so the model runs with
packed modules (same logits as ``llmprune.load``). Without llmprune imported, transformers warns "Unknown
quantization type, got llmprune" instead of silently loading random weights for the packed layers.

``llmprune.load`` stays the checked path: it validates the manifest (sizes, checksums, tensor specs) first.
``model.dequantize()`` swaps the packed modules back to dense ``nn.Linear``; ``save_pretrained`` of a packed model
is refused (``llmprune.save`` writes it, manifest included).
"""
from __future__ import annotations

from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING
from transformers.quantizers.base import HfQuantizer
from transformers.utils import logging
from transformers.utils.quantization_config import QuantizationConfigMixin

logger = logging.get_logger(__name__)

QUANT_METHOD = "llmprune"


class LlmpruneConfig(QuantizationConfigMixin):
    """The packed layers of a checkpoint: ``{name: {"format", "in_features", "out_features", "bias", "params"}}``
    (the manifest's ``layers``), so the skeleton can be built before any tensor is read."""

    def __init__(self, layers: dict | None = None, format: str = "mixed", **kwargs):
        self.quant_method = QUANT_METHOD
        self.layers = dict(layers or {})
        self.format = format

    def to_dict(self) -> dict:
        return {"quant_method": QUANT_METHOD, "format": self.format, "layers": self.layers}


class LlmpruneHfQuantizer(HfQuantizer):
    """Pre-packed weights only: llmprune compresses with calibration (``llmprune compress``), never on load."""

    requires_calibration = True

    def _process_model_before_weight_loading(self, model, **kwargs):
        from .checkpoint import swap_in_packed_

        layers = self.quantization_config.layers
        swap_in_packed_(model, layers, "config.json quantization_config", bias_dtype=getattr(model, "dtype", None))
        for name in layers:  # e.g. GPT-2's _init_weights(attention) rescales attention.c_proj.weight, which a packed
            # layer does not have; every tensor of the parent is in the checkpoint, so there is nothing to initialize
            model.get_submodule(name.rpartition(".")[0])._is_hf_initialized = True

    def _process_model_after_weight_loading(self, model, **kwargs):
        return model

    def is_serializable(self) -> bool:
        """Asked by ``save_pretrained`` only; transformers then refuses and points at this warning."""
        logger.warning("a model with llmprune's packed layers is saved with llmprune.save(model, out_dir), which "
                       "also writes the llmprune.json manifest that llmprune.load checks")
        return False

    @property
    def is_trainable(self) -> bool:
        return False

    def _dequantize(self, model, dtype=None):
        from .packed_linear import unpack_linears_

        return unpack_linears_(model, dtype)


def register() -> None:
    """Make ``quant_method: llmprune`` known to transformers (idempotent)."""
    AUTO_QUANTIZATION_CONFIG_MAPPING.setdefault(QUANT_METHOD, LlmpruneConfig)
    AUTO_QUANTIZER_MAPPING.setdefault(QUANT_METHOD, LlmpruneHfQuantizer)
