"""What a conversion did, layer by layer: plain data, attached to the converted model.

``ghostify.convert`` stores a :class:`ConversionPlan` as ``model.ghostify_plan``; the report,
the archive format and the transfer init read it instead of re-deriving decisions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["LayerPlan", "ConversionPlan", "PLAN_ATTR", "get_plan", "attach"]

PLAN_ATTR = "ghostify_plan"
# torch.fx's GraphModule.__deepcopy__ rebuilds the module and keeps only the attributes named here
_FX_PRESERVED = "_user_preserved_attributes"


@dataclass
class LayerPlan:
    """One convolution of the original model and what became of it."""

    name: str  # qualified name in the original model (the Ghost module keeps it)
    type: str  # class name of the original convolution
    c: int  # input channels
    n: int  # output channels (filters)
    k: tuple[int, ...]  # kernel, k x k in 2-D (k / k x k x k in 1-D / 3-D)
    stride: tuple[int, ...]
    groups: int
    converted: bool
    s: int
    d: int
    reason: str | None = None  # why it was left alone (None when converted)
    form: str | None = None  # "paper" (norm/act inside) or "linear" (bare conv or conv->norm)
    fused: list[str] = field(default_factory=list)  # names of the norm/act folded in
    note: str | None = None  # a caveat on a converted layer (e.g. "called twice: not fused")
    # transfer init (ghostify.transfer): relative MSE reached, and where it was measured:
    # "calibration" (on the layer's output maps), "synthetic" (the same, on inputs distilled from
    # BatchNorm statistics) or "weights" (data-free, on the filters)
    transfer_error: float | None = None
    transfer_fit: str | None = None
    refine: dict[str, Any] | None = None  # the refinement after the closed-form fit: steps, errors, kept
    # the latency-aware policy (ghostify.tune): this layer's median ms as a convolution and as a
    # Ghost module at each s tried, on onnxruntime, and the measured speed-up at the chosen s
    latency: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["k"] = list(self.k)
        data["stride"] = list(self.stride)
        return data


@dataclass
class ConversionPlan:
    """The whole conversion: settings, the mode the graph was rewritten in, every convolution."""

    config: dict[str, Any]
    mode: str  # "fx" (graph rewrite) or "module-swap" (tracing failed; modules swapped in place)
    layers: list[LayerPlan] = field(default_factory=list)
    lost_optimizations: list[str] = field(default_factory=list)
    init: str = "random"
    init_reason: str | None = None  # why this init ran (e.g. "the model file carries trained weights")
    transfer: dict[str, Any] | None = None  # how transfer init ran: fit, samples, seconds, output error...
    latency: dict[str, Any] | None = None  # the latency-aware policy: table, prediction, measurement

    @property
    def converted(self) -> list[LayerPlan]:
        return [layer for layer in self.layers if layer.converted]

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "mode": self.mode,
            "init": self.init,
            "init_reason": self.init_reason,
            "transfer": self.transfer,
            "latency": self.latency,
            "lost_optimizations": list(self.lost_optimizations),
            "layers": [layer.to_dict() for layer in self.layers],
        }


def attach(model: Any, name: str, value: Any) -> None:
    """Set ``model.<name> = value`` so that it survives ``copy.deepcopy`` (a GraphModule drops other attributes)."""
    setattr(model, name, value)
    meta = getattr(model, "meta", None)
    if isinstance(meta, dict):
        meta.setdefault(_FX_PRESERVED, {})[name] = value


def get_plan(model: Any) -> ConversionPlan | None:
    """The plan ``ghostify.convert`` attached to ``model``, or None for an unconverted model."""
    return getattr(model, PLAN_ATTR, None)
