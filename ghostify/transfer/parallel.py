"""Transfer for models fx cannot trace (module swap): every layer fitted from one pass of the original.

Without a graph there is no node-by-node walk, so the layers cannot each see the converted
model's own inputs. Instead a hook chain on the original model collects every converted layer's
statistics in one pass over the calibration chunks (candidates and targets both from the
original: each layer is fitted on its own, with no correction of upstream errors), all layers
are fitted, and a second pass of the converted model re-estimates their BatchNorm statistics.
Cost: one forward pass of each model plus the fits; memory: one chunk in flight. The error
recorded per layer is the fit's own (from the normal equations, before the activation).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from ghostify.errors import GhostifyError
from ghostify.layers.ghost import GhostModule, cheap_kernel
from ghostify.plan import ConversionPlan
from ghostify.transfer.apply import NormStatistics, apply_fit, intercept_slot
from ghostify.transfer.assign import choose
from ghostify.transfer.config import TransferConfig
from ghostify.transfer.inputs import CalibrationBatch
from ghostify.transfer.stats import PairStats
from ghostify.transfer.store import ActivationStore
from ghostify.transfer.walk import Progress, WalkResult, fit_data_free, layer_parts
from ghostify.utils import first_line, module_device_dtype

__all__ = ["parallel_fit"]


def _run(model: nn.Module, batch: CalibrationBatch) -> Any:
    try:
        return model(*batch.args, **batch.kwargs)
    except GhostifyError:
        raise
    except Exception as exc:  # the model's own code failed on this data: the user's input, one line
        raise GhostifyError(f"the model rejected the calibration data of shape {batch.shapes()}: "
                            f"{first_line(exc, 200)}", param="calibration_data") from exc


def _collect(original: nn.Module, converted: nn.Module, plan: ConversionPlan,
             batches: Callable[[], Iterable[CalibrationBatch]], samples: int,
             config: TransferConfig) -> dict[str, PairStats]:
    ghosts = {layer.name: converted.get_submodule(layer.name) for layer in plan.converted}
    parts = {name: layer_parts(original, layer, ghosts[name]) for name, layer in
             ((layer.name, layer) for layer in plan.converted)}
    gen = torch.Generator().manual_seed(config.seed)
    kernels = {name: cheap_kernel(parts[name].conv.kernel_size, g.d) for name, g in ghosts.items()}
    stats = {name: PairStats(g.n, kernels[name], intercept_slot(g),
                             config.rows_per_sample(g.n, math.prod(kernels[name]), samples), gen)
             for name, g in ghosts.items()}

    def hook(name: str) -> Callable[..., None]:
        def record(_mod: nn.Module, _inp: tuple, z: torch.Tensor) -> None:
            stats[name].add(parts[name].after_conv(z), z)  # H = T: both from the original's own inputs
        return record

    handles = [original.get_submodule(name).register_forward_hook(hook(name)) for name in ghosts]
    try:
        for batch in batches():
            _run(original, batch)
    finally:
        for h in handles:
            h.remove()
    return stats


@torch.no_grad()
def parallel_fit(original: nn.Module, converted: nn.Module, plan: ConversionPlan,
                 batches: Iterable[CalibrationBatch], config: TransferConfig, fit_label: str,
                 progress: Progress | None = None) -> WalkResult:
    """Fit every converted layer of a module-swapped model (see the module docstring)."""
    start = time.perf_counter()
    store = ActivationStore(config.memory_bytes, config.half_storage, module_device_dtype(converted)[0])
    kept, total = [], 0
    for b in batches:  # read twice: kept within the memory budget like the walk's values
        kept.append(store.put((b.args, b.kwargs)))
        total += b.size

    def chunks() -> Iterable[CalibrationBatch]:
        return (CalibrationBatch(*store.get(k)) for k in kept)

    try:
        stats = _collect(original, converted, plan, chunks, total, config)
        norms = [_fit_layer(original, converted, layer, stats[layer.name], fit_label) for layer in plan.converted]
        for i, layer in enumerate(plan.converted, 1):
            if progress is not None:
                progress(i, len(plan.converted), f"{layer.name} rel-MSE {layer.transfer_error:.3f}")
        for batch in chunks():
            _run(converted, batch)
        for n in norms:
            if n is not None:
                n.refold()
    finally:
        store.close()
    return WalkResult(seconds=round(time.perf_counter() - start, 2), output_error=None, peak_bytes=store.peak,
                      spilled_bytes=store.spilled, samples=total)


def _fit_layer(original: nn.Module, converted: nn.Module, layer: Any, stats: PairStats,
               fit_label: str) -> NormStatistics | None:
    """One layer from its statistics (data-free when it never ran on the calibration data)."""
    ghost: GhostModule = converted.get_submodule(layer.name)
    parts = layer_parts(original, layer, ghost)
    if stats.rows == 0:  # e.g. a training-only branch
        layer.transfer_error, layer.transfer_fit = round(fit_data_free(ghost, parts), 6), "weights"
        return None
    fit = stats.solve()
    a = choose(fit.E, ghost.n, ghost.m, ghost.s, parts.conv.groups)
    apply_fit(ghost, parts, a, fit)
    layer.transfer_error, layer.transfer_fit = round(fit.total(a, stats.variances()), 6), fit_label
    return NormStatistics(ghost)
