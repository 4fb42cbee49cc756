"""ghostify: turn the convolutions of any PyTorch CNN into Ghost modules (GhostNet, CVPR 2020).

The public names are imported on first use (PEP 562), so that ``import ghostify`` costs nothing
and the torch-free parts (``ghostify.runtime``, ``ghostify.gates``: ``ghostify bench`` and
``ghostify check``) run on a machine with onnxruntime but no PyTorch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ghostify._version import __version__
from ghostify.errors import GhostifyError

# public name -> module that defines it
_LAZY = {
    "convert": "ghostify.conversion",
    "load": "ghostify.io.archive",
    "save": "ghostify.io.archive",
    "load_model": "ghostify.io.specs",
    "GhostConfig": "ghostify.policy",
    "GhostModule": "ghostify.layers.ghost",
    "ConversionPlan": "ghostify.plan",
    "LayerPlan": "ghostify.plan",
    "get_plan": "ghostify.plan",
    "deploy": "ghostify.export.deploy",
    "DeployConfig": "ghostify.export.deploy",
    "QuantizeConfig": "ghostify.export.quantize",
    "build_report": "ghostify.report",
    "TransferConfig": "ghostify.transfer.config",
}

__all__ = ["convert", "load", "save", "load_model", "GhostConfig", "GhostModule", "ConversionPlan", "LayerPlan",
           "get_plan", "deploy", "DeployConfig", "QuantizeConfig", "build_report", "TransferConfig", "GhostifyError",
           "__version__"]

if TYPE_CHECKING:  # for type checkers and IDEs: the same names, eagerly
    from ghostify.conversion import convert
    from ghostify.export.deploy import DeployConfig, deploy
    from ghostify.export.quantize import QuantizeConfig
    from ghostify.io.archive import load, save
    from ghostify.io.specs import load_model
    from ghostify.layers.ghost import GhostModule
    from ghostify.plan import ConversionPlan, LayerPlan, get_plan
    from ghostify.policy import GhostConfig
    from ghostify.report import build_report
    from ghostify.transfer.config import TransferConfig


_SUBPACKAGES = ("layers", "models", "policy", "fx", "transfer", "report", "export", "runtime", "data", "io",
                "train", "reproduce", "gates", "plan", "utils", "errors", "cli")


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:  # `import ghostify; ghostify.export.export_onnx(...)` keeps working
        return importlib.import_module(f"ghostify.{name}")
    if name not in _LAZY:
        raise AttributeError(f"module 'ghostify' has no attribute {name!r}")
    from ghostify._torch import require_torch

    require_torch(name)
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # next time without __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
