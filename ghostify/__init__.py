"""ghostify: turn the convolutions of any PyTorch CNN into Ghost modules (GhostNet, CVPR 2020)."""

from ghostify.errors import GhostifyError
from ghostify.export.deploy import deploy
from ghostify.fx.rewrite import convert
from ghostify.io.archive import load, save
from ghostify.io.specs import load_model
from ghostify.layers.ghost import GhostModule
from ghostify.plan import ConversionPlan, LayerPlan, get_plan
from ghostify.policy import GhostConfig
from ghostify.report import build_report

__version__ = "0.1.0"

__all__ = ["convert", "load", "save", "load_model", "GhostConfig", "GhostModule", "GhostifyError",
           "ConversionPlan", "LayerPlan", "get_plan", "deploy", "build_report", "__version__"]
