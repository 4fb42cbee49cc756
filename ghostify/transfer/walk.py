"""One sequential pass over the converted graph, carrying both models' calibration activations.

The converted model is an fx graph in which every Ghost module sits where its convolution was.
The walk runs that graph node by node over all calibration inputs (chunk by chunk), keeping two
environments: the *converted* model's activations and the *original* model's. Every node that
is not a converted layer computes the same function in both models, so it runs on each side
(once, while both sides still agree: before the first converted layer they are the same
tensors). At a converted layer the original side applies the original convolution (with the
BatchNorm and activation the Ghost module absorbed), and the Ghost module is fitted right there:

1. statistics for Eq. 3 (:class:`ghostify.transfer.stats.PairStats`): candidate maps from the
   original filters on the *converted* model's inputs, targets from the *original* model;
2. the assignment and the closed-form fit, written into the module;
3. optionally a budgeted refinement (:mod:`ghostify.transfer.refine`);
4. the module runs on its inputs: those outputs continue downstream (so later layers correct
   earlier errors), its BatchNorm statistics are re-estimated, and its error is measured.

Cost: about one forward pass of each model plus one more of each converted layer's original
convolution, plus the fits: linear in the number of layers. Memory: the activations alive at the
current node for all inputs, held by :class:`ghostify.transfer.store.ActivationStore` within a
budget (the rest on disk).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from ghostify.errors import GhostifyError
from ghostify.layers.ghost import GhostModule, cheap_kernel
from ghostify.plan import ConversionPlan, LayerPlan
from ghostify.transfer.apply import NormStatistics, apply_fit, intercept_slot
from ghostify.transfer.assign import choose
from ghostify.transfer.config import TransferConfig
from ghostify.transfer.fit import ErrorMeter, LayerParts, weight_space_fit
from ghostify.transfer.inputs import CalibrationBatch
from ghostify.transfer.refine import RefinePool, refine
from ghostify.transfer.stats import PairStats
from ghostify.transfer.store import ActivationStore, Stored
from ghostify.utils import first_line, module_device_dtype

__all__ = ["SequentialWalk", "Progress", "WalkResult", "fit_data_free", "layer_parts"]

Progress = Callable[[int, int, str], None]  # (layers done, layers to fit, "name rel-MSE 0.012")


def layer_parts(original: nn.Module, layer: LayerPlan, ghost: GhostModule) -> LayerParts:
    """The original convolution, and the BatchNorm and activation the Ghost module absorbed."""
    conv = original.get_submodule(layer.name)
    norm = None
    if not isinstance(ghost.primary_conv[1], nn.Identity) and layer.fused:
        found = original.get_submodule(layer.fused[0])
        norm = found if found.__class__.__name__.startswith("BatchNorm") else None
    act = None if isinstance(ghost.primary_conv[2], nn.Identity) else ghost.primary_conv[2]
    return LayerParts(conv=conv, norm=norm, act=act)


def fit_data_free(ghost: GhostModule, parts: LayerParts) -> float:
    """The weight-space fit (no data); returns its weighted error (an optimistic estimate)."""
    if ghost.cheap_operation is None:
        return 0.0
    pf = weight_space_fit(parts, cheap_kernel(parts.conv.kernel_size, ghost.d))
    a = choose(pf.E, ghost.n, ghost.m, ghost.s, parts.conv.groups)
    apply_fit(ghost, parts, a, pf)
    scale, _ = parts.pre_act_affine()
    weights = parts.conv.weight.detach().float().flatten(1).pow(2).sum(1) * scale.float().cpu() ** 2
    return pf.total(a, weights.cpu())


@dataclass
class _Value:
    """A node's value over the calibration set: one constant, or one stored value per chunk."""

    const: Any = None
    chunks: list[Stored] | None = None

    @property
    def batched(self) -> bool:
        return self.chunks is not None


@dataclass
class WalkResult:
    seconds: float
    output_error: float | None
    peak_bytes: int
    spilled_bytes: int
    samples: int
    refine_seconds: float = 0.0
    layers: dict[str, float] = field(default_factory=dict)


class SequentialWalk:
    """The one pass (see the module docstring) over ``converted`` (an fx GraphModule)."""

    def __init__(self, original: nn.Module, converted: fx.GraphModule, plan: ConversionPlan, config: TransferConfig,
                 fit_label: str, progress: Progress | None = None) -> None:
        self.original, self.gm, self.plan, self.config = original, converted, plan, config
        self.fit_label = fit_label
        self.progress = progress
        self.modules = dict(converted.named_modules())
        self.layers = {layer.name: layer for layer in plan.converted}
        self.store = ActivationStore(config.memory_bytes, config.half_storage, module_device_dtype(converted)[0])
        self.generator = torch.Generator().manual_seed(config.seed)
        self.conv_env: dict[fx.Node, _Value] = {}
        self.orig_env: dict[fx.Node, _Value] = {}
        self.fitted: set[str] = set()
        self.refine_spent = 0.0
        self.done = 0
        self.samples = 0
        self.chunks = 0

    # -- values --------------------------------------------------------------------------------
    def _get(self, value: _Value, c: int) -> Any:
        return self.store.get(value.chunks[c]) if value.batched else value.const

    def _args(self, node: fx.Node, env: dict[fx.Node, _Value], c: int) -> tuple[tuple, dict]:
        def load(n: fx.Node) -> Any:
            return self._get(env[n], c)
        return fx.node.map_arg(node.args, load), fx.node.map_arg(node.kwargs, load)

    def _batched_value(self, compute: Callable[[int], Any]) -> _Value:
        return _Value(chunks=[self.store.put(compute(c)) for c in range(self.chunks)])

    def _free(self, node: fx.Node) -> None:
        for env in (self.conv_env, self.orig_env):
            value = env.pop(node, None)
            if value is not None and value.batched and value.chunks:
                for stored in value.chunks:
                    self.store.free(stored)
                value.chunks = []  # a shared value is freed once

    # -- nodes ---------------------------------------------------------------------------------
    def _placeholders(self, batches: Iterable[CalibrationBatch]) -> None:
        holders = [n for n in self.gm.graph.nodes if n.op == "placeholder"]
        per: dict[fx.Node, list[Stored]] = {n: [] for n in holders}
        for batch in batches:
            for i, node in enumerate(holders):
                if i < len(batch.args):
                    per[node].append(self.store.put(batch.args[i]))
                elif str(node.target) in batch.kwargs:
                    per[node].append(self.store.put(batch.kwargs[str(node.target)]))
            self.chunks += 1
            self.samples += batch.size
        for node in holders:
            if per[node]:
                value = _Value(chunks=per[node])
            elif node.args:  # a parameter with a default the data does not give
                value = _Value(const=node.args[0])
            else:
                raise GhostifyError(f"the model's forward takes {node.target!r}, which the calibration data does not "
                                    "give", param="calibration_data")
            self.conv_env[node] = self.orig_env[node] = value

    def _call(self, node: fx.Node, args: tuple, kwargs: dict) -> Any:
        if node.op == "call_module":
            return self.modules[str(node.target)](*args, **kwargs)
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], str(node.target))(*args[1:], **kwargs)
        if node.op == "get_attr":
            obj: Any = self.gm
            for part in str(node.target).split("."):
                obj = getattr(obj, part)
            return obj
        raise GhostifyError(f"unexpected graph node {node.op}")

    def _plain(self, node: fx.Node) -> None:
        """A node the two models share: run it on each side (once while the sides agree)."""
        inputs = node.all_input_nodes
        batched = any(self.conv_env[n].batched or self.orig_env[n].batched for n in inputs)
        shared = all(self.conv_env[n] is self.orig_env[n] for n in inputs)
        sides = [self.conv_env] if shared else [self.conv_env, self.orig_env]
        values = []
        for env in sides:
            if batched:
                values.append(self._batched_value(lambda c, env=env: self._call(node, *self._args(node, env, c))))
            else:
                values.append(_Value(const=self._call(node, *self._args(node, env, 0))))
        self.conv_env[node] = values[0]
        self.orig_env[node] = values[0] if shared else values[1]

    def _ghost(self, node: fx.Node) -> None:
        name = str(node.target)
        layer, ghost = self.layers[name], self.modules[name]
        parts = layer_parts(self.original, layer, ghost)
        first = name not in self.fitted
        self.fitted.add(name)
        data_fit = first and len(node.args) == 1 and not node.kwargs and not (layer.note and "called" in layer.note)
        x_c, x_o = self.conv_env[node.args[0]], self.orig_env[node.args[0]]
        if data_fit:
            targets = self._fit(layer, ghost, parts, x_c, x_o)
        else:
            if first:
                layer.transfer_error, layer.transfer_fit = round(fit_data_free(ghost, parts), 6), "weights"
                self._advance(layer)
            targets = self._batched_value(lambda c: parts.after_conv(parts.conv(self._get(x_o, c))))
        outputs = self._run_ghost(layer, ghost, x_c, targets, measure=data_fit)
        self.conv_env[node], self.orig_env[node] = outputs, targets

    def _fit(self, layer: LayerPlan, ghost: GhostModule, parts: LayerParts, x_c: _Value, x_o: _Value) -> _Value:
        """Statistics over every chunk, then the closed-form fit (and the optional refinement)."""
        kernel = cheap_kernel(parts.conv.kernel_size, ghost.d)
        rows = self.config.rows_per_sample(ghost.n, math.prod(kernel), self.samples)
        stats = PairStats(ghost.n, kernel, intercept_slot(ghost), rows, self.generator)
        pool = RefinePool(ghost, self.config.refine_samples, self.config.refine_crop, self.generator)
        targets = []
        for c in range(self.chunks):
            x = self._get(x_c, c)
            z = parts.conv(self._get(x_o, c))
            t = parts.after_conv(z)
            stats.add(t if x_c is x_o else parts.after_conv(parts.conv(x)), z)
            targets.append(self.store.put(t))
            if self.config.refine_steps > 0:
                pool.add(x, t)
        fit = stats.solve()
        apply_fit(ghost, parts, choose(fit.E, ghost.n, ghost.m, ghost.s, parts.conv.groups), fit)
        self._refine(layer, ghost, pool)
        return _Value(chunks=targets)

    def _refine(self, layer: LayerPlan, ghost: GhostModule, pool: RefinePool) -> None:
        """The budgeted refinement, its time shared out over the layers still to fit."""
        if self.config.refine_steps <= 0:
            return
        seconds = None
        if self.config.refine_seconds is not None:
            left = max(0.0, self.config.refine_seconds - self.refine_spent)
            seconds = left / max(1, len(self.layers) - self.done)
        t0 = time.perf_counter()
        before, after, steps = refine(ghost, pool, self.config, seconds, self.store.device)
        self.refine_spent += time.perf_counter() - t0
        layer.refine = {"steps": steps, "error_before": round(before, 6), "error_after": round(after, 6),
                        "kept": bool(after < before)}

    def _run_ghost(self, layer: LayerPlan, ghost: GhostModule, x_c: _Value, targets: _Value, measure: bool) -> _Value:
        """The module on its inputs: outputs downstream, BatchNorm re-estimated, error measured."""
        norms = NormStatistics(ghost) if measure else None
        meter = ErrorMeter()
        outputs = []
        try:
            for c in range(self.chunks):
                y = ghost(self._get(x_c, c))
                if measure:
                    meter.add(y, self._get(targets, c))
                outputs.append(self.store.put(y))
        finally:
            if norms is not None:
                norms.refold()  # the eval function is unchanged: the outputs above stay valid
        if measure:
            layer.transfer_error, layer.transfer_fit = round(meter.value, 6), self.fit_label
            self._advance(layer)
        return _Value(chunks=outputs)

    def _advance(self, layer: LayerPlan) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, len(self.layers), f"{layer.name} rel-MSE {layer.transfer_error:.3f}")

    def _output_error(self, node: fx.Node) -> float | None:
        """Relative error of the converted model's output against the original's, over the set."""
        arg = node.args[0]
        if not isinstance(arg, fx.Node) or not self.conv_env[arg].batched:
            return None
        meter = ErrorMeter()
        for c in range(self.chunks):
            y, t = self._get(self.conv_env[arg], c), self._get(self.orig_env[arg], c)
            if not isinstance(y, torch.Tensor) or y.dim() < 2:
                return None
            meter.add(y.reshape(y.shape[0], y.shape[1], -1), t.reshape(t.shape[0], t.shape[1], -1))
        return round(meter.value, 6)

    # -- the walk ------------------------------------------------------------------------------
    @torch.no_grad()
    def run(self, batches: Iterable[CalibrationBatch]) -> WalkResult:
        start = time.perf_counter()
        nodes = list(self.gm.graph.nodes)
        last_use = {n: i for i, node in enumerate(nodes) for n in node.all_input_nodes}
        output_error = None
        try:
            self._placeholders(batches)
            for i, node in enumerate(nodes):
                if node.op == "placeholder":
                    continue
                if node.op == "output":
                    output_error = self._output_error(node)
                    break
                if node.op == "call_module" and str(node.target) in self.layers:
                    self._ghost(node)
                else:
                    self._plain(node)
                for n in node.all_input_nodes:
                    if last_use.get(n) == i:
                        self._free(n)
        except GhostifyError:
            raise
        except Exception as exc:  # the model's own code failed on this data: the user's input, one line
            raise GhostifyError(f"the model rejected the calibration data: {first_line(exc, 200)}",
                                param="calibration_data") from exc
        finally:
            self.store.close()
        return WalkResult(seconds=round(time.perf_counter() - start, 2), output_error=output_error,
                          peak_bytes=self.store.peak, spilled_bytes=self.store.spilled, samples=self.samples,
                          refine_seconds=round(self.refine_spent, 2))
