"""The cost report: Eq. 4 / Eq. 5 predictions beside measured MACs and parameters, per layer.

The JSON form (``Report.to_dict``) is documented in docs/report-schema.md; its keys are stable.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ghostify.errors import GhostifyError
from ghostify.forward import check_forward, example_input
from ghostify.fx.lift import is_exported_graph, lift_exported
from ghostify.plan import ConversionPlan, get_plan
from ghostify.policy import theoretical_compression, theoretical_speedup
from ghostify.report.counting import CONVENTION, count_macs, count_params, forward_with_hooks

__all__ = ["Report", "LayerRow", "build_report", "SCHEMA", "GPU_NOTE"]

SCHEMA = "ghostify.report/1"

GPU_NOTE = ("On GPUs a Ghost model is usually slower than the original despite fewer MACs: its "
            "depthwise cheap operations are memory-bound (the paper's authors say the same and "
            "target GPUs with G-GhostNet). Measure it on the GPU before relying on the MAC count.")


@dataclass
class LayerRow:
    name: str
    type: str
    converted: bool
    reason: str | None
    c: int
    n: int
    k: list[int]
    stride: list[int]
    groups: int
    out_hw: list[int] | None
    s: int | None
    d: int | None
    r_s: float | None  # Eq. 4, exact
    r_c: float | None  # Eq. 5, exact
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    form: str | None = None
    fused: list[str] = field(default_factory=list)
    note: str | None = None
    transfer_error: float | None = None  # relative MSE after transfer init (see docs/transfer.md)
    transfer_fit: str | None = None  # where it was measured: "calibration"/"synthetic" maps or "weights"
    refine: dict[str, Any] | None = None  # transfer's refinement of this layer: steps, errors, kept
    latency: dict[str, Any] | None = None  # --latency-aware: median ms per form, measured speed-up


@dataclass
class Report:
    model: str
    input_size: list[int]
    plan: ConversionPlan
    layers: list[LayerRow]
    totals: dict[str, Any]
    counter: str
    target: str = "cpu"
    warnings: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None  # where the original's weights came from (None: random init)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "kind": "convert",
            "model": self.model,
            "weights": self.weights,
            "input_size": list(self.input_size),
            "convention": CONVENTION,
            "counter": self.counter,
            "target": self.target,
            "config": self.plan.config,
            "mode": self.plan.mode,
            "init": self.plan.init,
            "init_reason": self.plan.init_reason,
            "transfer": self.plan.transfer,
            "latency": self.plan.latency,
            "totals": self.totals,
            "layers": [dict(vars(row)) for row in self.layers],
            "lost_optimizations": list(self.plan.lost_optimizations),
            "warnings": list(self.warnings),
            **self.extra,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)


def _output_shapes(model: nn.Module, names: Sequence[str], x: Any) -> dict[str, list[int]]:
    wanted = set(names)
    shapes: dict[str, list[int]] = {}

    def record(name: str):
        def hook(mod: nn.Module, inp: tuple, out: torch.Tensor) -> None:
            shapes.setdefault(name, list(out.shape[2:]))  # the spatial dims, 1-D to 3-D
        return hook

    forward_with_hooks(model, x, {name: record(name) for name, _ in model.named_modules() if name in wanted})
    return shapes


def build_report(
    original: nn.Module,
    converted: nn.Module,
    input_size: Sequence[int] = (3, 224, 224),
    model_name: str = "model",
    target: str = "cpu",
    weights: str | None = None,
) -> Report:
    """Measure both models and put Eq. 4/5 beside the measurement, layer by layer.

    ``input_size`` is one example without the batch: (C, L), (C, H, W) or (C, T, H, W);
    ``weights`` records where the original's weights came from (``LoadedModel.weights``).
    """
    plan = get_plan(converted)
    if plan is None:
        raise GhostifyError("the second model was not produced by ghostify.convert (no ghostify_plan)")
    input_size = [int(v) for v in input_size]
    if is_exported_graph(original):  # per-layer counts need the conv modules the pass saw
        original = lift_exported(copy.deepcopy(original))
    check_forward(original, input_size)
    x = example_input(original, input_size)
    before = count_macs(original, x)
    after = count_macs(converted, example_input(converted, input_size))
    shapes = _output_shapes(original, [layer.name for layer in plan.layers], x)

    rows: list[LayerRow] = []
    saved_theoretical = 0.0  # MACs Eq. 4 says the converted layers cost
    converted_before = 0
    for layer in plan.layers:
        macs_b = before.by_module.get(layer.name, 0)
        macs_a = after.by_module.get(layer.name, macs_b) if layer.converted else macs_b
        params_b = count_params(original, layer.name) + sum(
            count_params(original, f) for f in layer.fused if _is_module(original, f))
        params_a = count_params(converted, layer.name) if layer.converted else count_params(original, layer.name)
        r_s = r_c = None
        if layer.converted:
            r_s = theoretical_speedup(layer.c, layer.k, layer.s, layer.d, layer.groups)
            r_c = theoretical_compression(layer.c, layer.k, layer.s, layer.d, layer.groups)
            saved_theoretical += macs_b / r_s
            converted_before += macs_b
        rows.append(LayerRow(
            name=layer.name, type=layer.type, converted=layer.converted, reason=layer.reason,
            c=layer.c, n=layer.n, k=list(layer.k), stride=list(layer.stride),
            groups=layer.groups, out_hw=shapes.get(layer.name), s=layer.s if layer.converted else None,
            d=layer.d if layer.converted else None, r_s=_round(r_s), r_c=_round(r_c),
            macs_before=macs_b, macs_after=macs_a, params_before=params_b, params_after=params_a,
            form=layer.form, fused=list(layer.fused), note=layer.note,
            transfer_error=layer.transfer_error, transfer_fit=layer.transfer_fit, refine=layer.refine,
            latency=layer.latency,
        ))

    p_before, p_after = count_params(original), count_params(converted)
    theoretical_after = before.total - converted_before + saved_theoretical
    totals = {
        "params_before": p_before,
        "params_after": p_after,
        "macs_before": before.total,
        "macs_after": after.total,
        "theoretical_speedup": _round(before.total / theoretical_after if theoretical_after else math.nan),
        "measured_speedup": _round(before.total / after.total if after.total else math.nan),
        "measured_compression": _round(p_before / p_after if p_after else math.nan),
        "layers_total": len(plan.layers),
        "layers_converted": len(plan.converted),
    }
    warnings: list[str] = []
    if target != "cpu":
        warnings.append(GPU_NOTE)
    counter = before.counter if before.counter == after.counter else f"{before.counter}/{after.counter}"
    return Report(model=model_name, input_size=input_size, plan=plan, layers=rows, totals=totals,
                  counter=counter, target=target, warnings=warnings, weights=weights)


def _is_module(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
        return True
    except AttributeError:
        return False


def _round(v: float | None) -> float | None:
    return None if v is None else round(float(v), 4)
