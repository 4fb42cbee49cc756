"""Transfer init: start every Ghost module from the convolution it replaces.

``ghostify.convert(model, init="transfer", calibration_data=...)`` calls :func:`transfer_init`.
For each converted layer:

1. choose which m of the n original filters stay as the primary convolution (intrinsic maps) and
   which intrinsic map each other channel becomes a ghost of (``assign.choose``), from the error
   of rebuilding map o from map i with one cheap depthwise filter (the paper's Table 2);
2. fit each ghost's cheap filter by least squares (``stats.PairStats`` on calibration maps, or
   ``fit.weight_space_fit`` without data), give the ghost the BN of the channel it stands for,
   and set ``channel_order`` so the module's outputs come in the original order (downstream
   layers keep their weights);
3. with calibration data: re-estimate the module's BN statistics (re-folded so eval output is
   unchanged), optionally after a budgeted refinement.

With calibration data (or inputs distilled from BatchNorm statistics) the layers are fitted in
one sequential pass over the model (:mod:`ghostify.transfer.walk`; :mod:`.parallel` for models
fx cannot trace). Each layer's relative MSE lands in ``LayerPlan.transfer_error``
(``transfer_fit`` says where it was measured), and ``ConversionPlan.transfer`` sums the run up.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import fx, nn

from ghostify.errors import GhostifyError
from ghostify.layers.ghost import GhostModule
from ghostify.plan import ConversionPlan
from ghostify.transfer.config import TransferConfig
from ghostify.transfer.inputs import CalibrationBatch, as_calibration_tensor, calibration_batches
from ghostify.transfer.parallel import parallel_fit
from ghostify.transfer.synthetic import has_batchnorm, plan_synthesis, synthesize_inputs
from ghostify.transfer.walk import Progress, SequentialWalk, WalkResult, fit_data_free, layer_parts
from ghostify.utils import eval_mode, module_device_dtype

__all__ = ["transfer_init", "TransferConfig", "as_calibration_tensor", "calibration_batches", "DEFAULT_CALIB_SAMPLES"]

DEFAULT_CALIB_SAMPLES = TransferConfig().calibration_samples(synthetic=False)


def _settings(config: TransferConfig | None, overrides: dict[str, Any]) -> TransferConfig:
    config = config or TransferConfig()
    unknown = set(overrides) - {f.name for f in dataclasses.fields(TransferConfig)}
    if unknown:
        raise TypeError(f"transfer_init got unknown settings {sorted(unknown)} (see TransferConfig)")
    return dataclasses.replace(config, **overrides)


def _synthetic(original: nn.Module, input_size: Sequence[int], config: TransferConfig,
               progress: Progress | None) -> tuple[torch.Tensor, dict[str, Any]]:
    """Inputs distilled from the BatchNorm statistics, sized to the time budget; and how."""
    samples = config.calibration_samples(synthetic=True)
    if config.synthetic_size is not None:
        size, steps = tuple(config.synthetic_size), config.synthetic_steps
        if len(size) == len(input_size) - 1:  # a spatial size alone: the channels stay the model's
            size = (int(input_size[0]), *size)
    else:
        size, steps = plan_synthesis(original, input_size, samples, config.synthetic_steps, config.synthetic_seconds)
    start = time.perf_counter()
    x, steps_run = synthesize_inputs(original, size, samples, steps, seed=config.seed, progress=progress,
                                     seconds=config.synthetic_seconds if config.synthetic_size is None else None)
    return x, {"samples": samples, "size": list(size), "steps": steps_run, "steps_planned": steps,
               "seconds": round(time.perf_counter() - start, 2)}


def _on_device(batches: Iterable[CalibrationBatch], device: torch.device,
               dtype: torch.dtype) -> Iterable[CalibrationBatch]:
    for b in batches:
        yield CalibrationBatch(tuple(a.to(device=device, dtype=dtype) for a in b.args),
                               {k: v.to(device=device, dtype=dtype) for k, v in b.kwargs.items()})


def _data_free(original: nn.Module, converted: nn.Module, plan: ConversionPlan) -> None:
    ghosts = {name: mod for name, mod in converted.named_modules() if isinstance(mod, GhostModule)}
    for layer in plan.converted:
        ghost = ghosts[layer.name]
        layer.transfer_error = round(fit_data_free(ghost, layer_parts(original, layer, ghost)), 6)
        layer.transfer_fit = "weights"


def _summary(result: WalkResult | None, fit: str, config: TransferConfig) -> dict[str, Any]:
    out: dict[str, Any] = {"fit": fit, "config": config.to_dict()}
    if result is not None:
        out.update(samples=result.samples, seconds=result.seconds, refine_seconds=result.refine_seconds,
                   output_error=result.output_error,
                   activations_peak_bytes=result.peak_bytes, activations_spilled_bytes=result.spilled_bytes)
    return out


def transfer_init(
    original: nn.Module,
    converted: nn.Module,
    plan: ConversionPlan,
    calibration_data: Any = None,
    config: TransferConfig | None = None,
    *,
    input_size: Sequence[int] | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    **settings: Any,
) -> None:
    """Fill every converted Ghost module from the original convolution (in place).

    Args:
        original: the model before conversion (read only).
        converted: the output of the conversion pass; its Ghost modules are overwritten.
        plan: the conversion plan; ``transfer_error`` / ``transfer_fit`` are set per layer and
            ``plan.transfer`` sums the run up.
        calibration_data: unlabeled inputs in the model's own format
            (:mod:`ghostify.transfer.inputs`), or None.
        config: the settings (:class:`TransferConfig`); ``settings`` override single fields.
        input_size: the model's input size without the batch (C, H, W for images). Without
            calibration data and with BatchNorm in the model, the fit runs on inputs distilled
            from the BatchNorm statistics; without it (or BatchNorm) it is the weight-space fit.
        progress: ``progress(done, total, text)`` as layers are fitted (and inputs distilled).
    """
    if original is converted:
        raise GhostifyError("transfer init needs the original model: convert with inplace=False", param="inplace")
    cfg = _settings(config, settings)
    device, dtype = module_device_dtype(converted)
    fit = "calibration"
    batches: Iterable[CalibrationBatch] | None = None
    with eval_mode(original, converted):
        if calibration_data is not None:
            batches = calibration_batches(calibration_data, cfg.calibration_samples(False), cfg.chunk)
        elif input_size is not None and has_batchnorm(original):
            x, distilled = _synthetic(original, input_size, cfg, progress)
            batches, fit = calibration_batches(x, x.shape[0], cfg.chunk), "synthetic"
        if batches is None:
            _data_free(original, converted, plan)
            plan.transfer = _summary(None, "weights", cfg)
            return
        batches = _on_device(batches, device, dtype)
        if isinstance(converted, fx.GraphModule) and plan.mode == "fx":
            result = SequentialWalk(original, converted, plan, cfg, fit, progress).run(batches)
        else:
            result = parallel_fit(original, converted, plan, batches, cfg, fit, progress)
    plan.transfer = _summary(result, fit, cfg)
    if fit == "synthetic":
        plan.transfer["synthetic"] = distilled
