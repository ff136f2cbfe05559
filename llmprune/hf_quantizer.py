"""``AutoModelForCausalLM.from_pretrained`` for packed llmprune folders, through transformers' quantizer plug-in point.

Why: users load checkpoints with transformers (pipelines, lm-eval's ``hf`` model, their own scripts). A packed
folder's ``config.json`` carries ``quantization_config = {"quant_method": "llmprune", "layers": ...}``; once
llmprune is imported, transformers builds the model on the meta device, this quantizer checks the layer records
against the shards' tensor headers (a hand-edited config fails in one line instead of loading garbage), swaps the
listed Linears for ``PackedLinear`` skeletons, and transformers' own loader fills their buffers, so the model runs
with packed modules (same logits as ``llmprune.load``). Without llmprune imported, transformers warns "Unknown
quantization type, got llmprune" instead of silently loading random weights for the packed layers.

``llmprune.load`` additionally checks every shard's size and sha256 against ``llmprune.json``.
``model.dequantize()`` swaps the packed modules back to dense ``nn.Linear`` (GPT-2's ``Conv1D``; MoE experts
re-fused) in the dtype the model computes in, so that ``save_pretrained`` then writes a plain folder;
``save_pretrained`` of a packed model is refused (``llmprune.save`` writes it, manifest included).
"""
from __future__ import annotations

from pathlib import Path

from torch import nn
from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING
from transformers.quantizers.base import HfQuantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

from .errors import CorruptCheckpoint, UserInputError
from .manifest import QUANT_METHOD


class LlmpruneConfig(QuantizationConfigMixin):
    """The packed layers of a checkpoint: ``{name: {"format", "in_features", "out_features", "bias", "params"}}``
    (the manifest's ``layers``), so the skeleton can be built before any tensor is read."""

    def __init__(self, layers: dict | None = None, format: str = "mixed", **kwargs):
        self.quant_method = QUANT_METHOD
        self.layers = layers if layers is not None else {}
        self.format = format

    def to_dict(self) -> dict:
        return {"quant_method": QUANT_METHOD, "format": self.format, "layers": self.layers}


class LlmpruneHfQuantizer(HfQuantizer):
    """Pre-packed weights only: llmprune compresses with calibration (``llmprune compress``), never on load."""

    requires_calibration = True

    def _process_model_before_weight_loading(self, model, checkpoint_files=None, **kwargs):
        from . import manifest as mf
        from .checkpoint import swap_in_packed_

        layers = self.quantization_config.layers
        files = [f for f in checkpoint_files or [] if str(f).endswith(".safetensors")]
        config_json = (Path(files[0]).parent if files else Path(".")) / "config.json"
        where = f"{config_json} quantization_config"
        mf.check_layer_records(where, layers)
        tensors = mf.shard_headers(files) if files else None
        if tensors is not None:
            mf.check_layers(where, layers, tensors)
        swap_in_packed_(model, layers, where, bias_dtype=getattr(model, "dtype", None))
        if tensors is not None:
            _check_none_unlisted(model, tensors, config_json)
        for name in layers:  # e.g. GPT-2's _init_weights(attention) rescales attention.c_proj.weight, which a packed
            # layer does not have; every tensor of the parent is in the checkpoint, so there is nothing to initialize
            model.get_submodule(name.rpartition(".")[0])._is_hf_initialized = True

    def _process_model_after_weight_loading(self, model, **kwargs):
        from .packed_linear import PackedLinear

        for module in model.modules():  # as llmprune.load leaves them: an inference module
            if isinstance(module, PackedLinear) and module.bias is not None:
                module.bias.requires_grad_(False)
        return model

    def is_serializable(self) -> bool:
        """Asked by ``save_pretrained`` only: refuse with the fix rather than transformers' generic message."""
        raise UserInputError("save_pretrained cannot write llmprune's packed layers; use llmprune.save(model, "
                             "out_dir) (it also writes the llmprune.json manifest), or model.dequantize() first")

    @property
    def is_trainable(self) -> bool:
        return False

    @property
    def is_compileable(self) -> bool:
        """``PackedLinear`` runs under torch.compile and CUDA graphs (``llmprune bench``'s static variants), so
        ``generate`` with a static cache may compile a packed model as it would the dense one."""
        return True

    def dequantize(self, model, dtype=None):
        """As transformers' ``HfQuantizer.dequantize``, except that no ``dtype`` keeps the dtype the model computes
        in: transformers would take ``config.dtype``, which ``model.to(dtype)`` and ``llmprune.load(dtype=...)`` leave
        as it was, and float32 layers in a 16-bit model fail at the next forward."""
        model = self._dequantize(model, dtype=dtype)
        self.remove_quantization_config(model)
        return model

    def _dequantize(self, model, dtype=None):
        from .model.experts import fuse_experts_
        from .packed_linear import unpack_linears_

        unpack_linears_(model, dtype)  # GPT-2's packed layers become Conv1D again
        fuse_experts_(model)  # transformers' own layout: save_pretrained then writes what from_pretrained reads
        return model


def _check_none_unlisted(model: nn.Module, tensors: dict, where: Path) -> None:
    """A Linear whose weight is absent from the shards but whose other tensors are there is a packed layer the
    config does not list (transformers would initialize it randomly)."""
    from .packed_linear import PackedLinear

    for key in tensors:
        prefix = key.rpartition(".")[0]
        if f"{prefix}.weight" in tensors:
            continue
        try:
            module = model.get_submodule(prefix)
        except AttributeError:
            continue
        if not isinstance(module, PackedLinear) and isinstance(getattr(module, "weight", None), nn.Parameter):
            raise CorruptCheckpoint(f"{where}: {prefix} is stored packed ({key}) but its quantization_config does "
                                    f"not list it; re-save the checkpoint")


def register() -> None:
    """Make ``quant_method: llmprune`` known to transformers (idempotent)."""
    AUTO_QUANTIZATION_CONFIG_MAPPING.setdefault(QUANT_METHOD, LlmpruneConfig)
    AUTO_QUANTIZER_MAPPING.setdefault(QUANT_METHOD, LlmpruneHfQuantizer)


register()  # importing this module registers it, whichever of llmprune and transformers came first
