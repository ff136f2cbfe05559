"""Model access: ``resolve`` (alias | HF folder | .gguf | Hub id) and architecture-generic layer discovery."""
from .aliases import ALIASES, ensure_alias
from .layers import decoder_layers, get_weight, in_features, is_linear, linears, set_weight_
from .load import LoadedModel, is_hf_folder, resolve

__all__ = ["ALIASES", "ensure_alias", "decoder_layers", "get_weight", "in_features", "is_linear", "linears",
           "set_weight_", "LoadedModel", "is_hf_folder", "resolve"]
