"""Getting models in and out: specs, safe loading, the .ghost archive."""

from ghostify.io.archive import load, save
from ghostify.io.safe_load import safe_torch_load
from ghostify.io.specs import LoadedModel, load_model, parse_input_size

__all__ = ["load", "save", "safe_torch_load", "LoadedModel", "load_model", "parse_input_size"]
