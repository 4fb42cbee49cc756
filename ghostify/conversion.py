"""``ghostify.convert``: the pass, then the Ghost modules' weights.

A thin composition, like ``torch.ao.quantization.convert_fx``: the rewrite pass
(:func:`ghostify.fx.rewrite.rewrite`) builds the Ghost model and its plan; the weights then come
from PyTorch's default init (``init="random"``, the paper trains from scratch) or from the
original convolutions (``init="transfer"``, :mod:`ghostify.transfer`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from ghostify.errors import GhostifyError, InvalidValueError, NothingToConvertError
from ghostify.fx.rewrite import rewrite
from ghostify.layers.ghost import GhostModule
from ghostify.plan import PLAN_ATTR, ConversionPlan, attach
from ghostify.policy import GhostConfig

__all__ = ["convert", "INIT_CHOICES"]

INIT_CHOICES = ("random", "transfer")


def _config(config: GhostConfig | None, s: int | None, d: int | None, include: Iterable[str] | None,
            exclude: Iterable[str] | None) -> GhostConfig:
    """A copy of ``config`` (or the default) with the keyword shortcuts applied on top."""
    config = copy.deepcopy(config) if config is not None else GhostConfig()
    if s is not None or d is not None:
        config.set_global(s if s is not None else config.s, d if d is not None else config.d)
    if include is not None:
        config.include = list(include) or ["*"]
    if exclude is not None:
        config.exclude = list(exclude)
    return config


def _random_init(gm: nn.Module, plan: ConversionPlan, seed: int | None) -> None:
    """PyTorch's default init for every converted layer (seeded when asked for)."""
    ghosts = {name: mod for name, mod in gm.named_modules() if isinstance(mod, GhostModule)}
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        for layer in plan.converted:
            _reset(ghosts[layer.name])


def _reset(ghost: GhostModule) -> None:
    for mod in ghost.modules():
        if mod is not ghost and hasattr(mod, "reset_parameters"):
            mod.reset_parameters()


def convert(
    model: nn.Module,
    s: int | None = None,
    d: int | None = None,
    config: GhostConfig | None = None,
    *,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
    init: str = "random",
    calibration_data: Any = None,
    input_size: Sequence[int] | None = None,
    calibration_samples: int | None = None,
    transfer: Any = None,
    progress: Callable[[int, int, str], None] | None = None,
    seed: int | None = None,
    strict: bool = False,
    inplace: bool = False,
) -> nn.Module:
    """Return a copy of ``model`` whose convolutions are Ghost modules (the input is untouched).

    Args:
        model: any ``nn.Module`` (CNN); traced with torch.fx, or swapped in place if that fails.
        config: the policy (:class:`ghostify.GhostConfig`).
        s, d, include, exclude: shortcuts for the policy's global ratio, cheap kernel and name
            globs; given, they override ``config``'s.
        init: ``"random"`` (fresh weights, the paper trains from scratch) or ``"transfer"``
            (start each Ghost module from the convolution it replaces; see ghostify.transfer).
        calibration_data: unlabeled inputs for ``init="transfer"``, in the model's own format
            (a tensor with the batch along dim 0, a tuple or dict of them, a Dataset or DataLoader;
            see :mod:`ghostify.transfer.inputs`).
        input_size: one input's size without the batch (C, H, W for images); with
            ``init="transfer"`` and no calibration data, the fit runs on inputs distilled from the
            model's BatchNorm statistics.
        calibration_samples: the calibration set's size (a shortcut for
            ``TransferConfig(samples=...)``): read from the data, or distilled without it.
        transfer: the transfer settings, a :class:`ghostify.transfer.TransferConfig`.
        progress: ``progress(done, total, text)`` while transfer init fits the layers.
        seed: makes the result reproducible: the random init, or transfer's sampling and
            distillation (default: the global RNG for random init, ``TransferConfig.seed``).
        strict: raise :class:`NothingToConvertError` when no convolution converts.
        inplace: rewrite ``model`` itself (module-swap mode only; fx always builds a new module).

    The returned module carries ``ghostify_plan`` (:class:`ghostify.plan.ConversionPlan`).
    """
    if init not in INIT_CHOICES:
        raise InvalidValueError("init", f"must be one of {', '.join(INIT_CHOICES)}, got {init!r}")
    config = _config(config, s, d, include, exclude)
    if not isinstance(model, nn.Module):
        raise GhostifyError(f"expected a torch.nn.Module, got {type(model).__name__}")
    if inplace and init == "transfer":  # transfer reads the original convolutions after the rewrite
        raise GhostifyError("init='transfer' needs the original model intact; use inplace=False", param="inplace")
    latency, asked = None, config
    if config.latency == "measure":
        config, latency = _measured_policy(model, config, input_size, progress, inplace)
    gm, plan = rewrite(model, config, inplace=inplace)
    if latency is not None:  # timings do not depend on the weights: measure before the init
        gm, plan = _measured_choice(model, gm, plan, asked, latency, input_size)
    plan.init = init
    if not plan.layers:
        raise GhostifyError("the model has no convolution (nn.Conv1d/2d/3d): nothing for ghostify to convert")
    if strict and not plan.converted:
        raise NothingToConvertError("no convolution was converted (every one was left alone: see the report)")
    if init == "random":
        _random_init(gm, plan, seed)
    else:
        from ghostify.transfer import transfer_init

        settings = {} if calibration_samples is None else {"samples": calibration_samples}
        if seed is not None:
            settings["seed"] = seed
        transfer_init(model, gm, plan, calibration_data, transfer, input_size=input_size, progress=progress,
                      **settings)
    gm.train(model.training)
    if latency is not None:
        _record_latency(plan, latency)
    attach(gm, PLAN_ATTR, plan)
    return gm


def _measured_policy(model: nn.Module, config: GhostConfig, input_size: Sequence[int] | None,
                     progress: Callable[[int, int, str], None] | None, inplace: bool) -> tuple[GhostConfig, dict]:
    """The policy decided by timing each candidate on this machine (ghostify.tune)."""
    if input_size is None:
        raise GhostifyError("a latency-aware conversion times each layer at its real input shape: "
                            "give input_size", param="input_size")
    if inplace:  # the timings and the final measurement need the original model intact
        raise GhostifyError("latency='measure' needs the original model intact; use inplace=False", param="inplace")
    from ghostify.tune import latency_policy

    return latency_policy(model, config, input_size, progress)


def _measured_choice(model: nn.Module, gm: nn.Module, plan: ConversionPlan, config: GhostConfig,
                     latency: dict[str, Any], input_size: Sequence[int]) -> tuple[nn.Module, ConversionPlan]:
    """The whole model measured. A budget may choose again (``_second_try``). Without one
    (``config``: the policy as asked), the per-layer choice and Eq. 4's model are timed side by side,
    and the faster kept: layers timed alone cannot see every effect of the graph around them."""
    from ghostify.tune import measure_side_by_side, measure_speedup  # onnxruntime: only when asked for

    if config.budgeted or latency.get("anchor") is None:
        latency["measured"] = measure_speedup(model, gm, input_size, config.threads)
        if config.target_speedup is not None and latency["measured"]["speedup"] < config.target_speedup:
            gm, plan = _second_try(model, gm, plan, config, latency, input_size)
        if config.target_speedup is not None:  # target.met is the prediction's; this is the measurement's
            latency["target"]["measured_met"] = latency["measured"]["speedup"] >= config.target_speedup
        latency["choice"] = "per layer"
        return gm, plan
    eq4, eq4_plan = rewrite(model, config.without_latency())
    if _choices(eq4_plan) == _choices(plan):  # every candidate measured faster: one model, timed once
        latency["measured"] = measure_speedup(model, gm, input_size, config.threads)
        latency["choice"], latency["same_as_eq4"] = "per layer (the same model as Eq. 4's)", True
        return gm, plan
    both = measure_side_by_side(model, {"per layer": gm, "eq4": eq4}, input_size, config.threads)
    latency["measured"], latency["eq4_measured"] = both["per layer"], both["eq4"]
    if both["eq4"]["speedup"] <= both["per layer"]["speedup"]:
        latency["choice"] = "per layer"
        return gm, plan
    latency["choice"] = (f"Eq. 4's policy: measured x{both['eq4']['speedup']:.2f} whole, the per-layer choice "
                         f"x{both['per layer']['speedup']:.2f}, side by side")
    latency["per_layer_measured"], latency["measured"] = both["per layer"], both["eq4"]  # the prediction's model
    return eq4, eq4_plan


def _choices(plan: ConversionPlan) -> list[tuple[str, int]]:
    return [(layer.name, layer.s) for layer in plan.converted]


def _second_try(model: nn.Module, gm: nn.Module, plan: ConversionPlan, config: GhostConfig,
                latency: dict[str, Any], input_size: Sequence[int]) -> tuple[nn.Module, ConversionPlan]:
    """A speed-up budget measured short of its target: choose again with the prediction calibrated
    on the model just measured (the table and anchor come from the cache), measure, and keep the
    faster of the two. ``latency`` is updated in place; ``first_try`` records the first."""
    from ghostify.tune import latency_policy, measure_speedup, recalibrated_alpha, remember_alpha

    alpha = recalibrated_alpha(latency, latency["measured"]["speedup"])
    if alpha is None:
        return gm, plan
    decided, second = latency_policy(model, config, input_size, alpha=alpha)
    gm2, plan2 = rewrite(model, decided)
    second["measured"] = measure_speedup(model, gm2, input_size, config.threads)
    first = {"predicted_speedup": latency.get("predicted_speedup"), "measured": latency["measured"],
             "converted": len(plan.converted)}
    if second["measured"]["speedup"] <= latency["measured"]["speedup"]:
        latency["second_try"] = {"predicted_speedup": second.get("predicted_speedup"),
                                 "measured": second["measured"], "kept": False}
        return gm, plan
    remember_alpha(config, second, alpha)
    table = {k: latency[k] for k in ("shapes_measured", "shapes_cached", "table_seconds")}  # what this run timed
    latency.clear()
    latency.update(second, first_try=first, **table)
    return gm2, plan2


def _record_latency(plan: ConversionPlan, latency: dict[str, Any]) -> None:
    """Each measured layer's timings on its plan row, and the measured speed-up at its chosen s."""
    for layer in plan.layers:
        row = latency["layers"].get(layer.name)
        if row is None:
            continue
        layer.latency = dict(row)
        ghost = row.get(f"s{layer.s}") if layer.converted else None
        if ghost:
            layer.latency["speedup"] = round(row["conv"] / ghost, 3)
    plan.latency = latency
