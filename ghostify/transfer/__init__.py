"""Transfer init: start every Ghost module from the convolution it replaces.

``ghostify.convert(model, init="transfer", calibration_data=...)`` calls :func:`transfer_init`.
For each converted layer (in graph order):

1. choose which m of the n original filters stay as the primary convolution (intrinsic maps) and
   which intrinsic map each other channel becomes a ghost of (``assign.choose``), from the error
   of rebuilding map o from map i with one d x d depthwise filter (the paper's Table 2);
2. fit each ghost's d x d cheap filter by least squares (``fit.weight_space_fit`` without data,
   ``fit.data_fit`` on calibration maps), give the ghost the BN of the channel it stands for,
   and set ``channel_order`` so the module's outputs come in the original order (downstream
   layers keep their weights);
3. with calibration data: refine primary and cheap filters jointly on the local reconstruction
   error (inputs from the converted model so far, targets from the original model), then
   re-estimate the module's BN statistics (re-folded so eval output is unchanged).

Each layer's relative MSE lands in ``LayerPlan.transfer_error`` (``transfer_fit`` says whether it
was measured on calibration maps or, data-free, on the filters in weight space).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from ghostify.errors import GhostifyError
from ghostify.layers.ghost import GhostModule
from ghostify.plan import ConversionPlan, LayerPlan
from ghostify.transfer.assign import Assignment, choose
from ghostify.transfer.fit import (
    LayerParts,
    apply_fit,
    data_fit,
    intercept_slot,
    recalibrate_bn,
    refine,
    relative_mse,
    weight_space_fit,
)
from ghostify.transfer.synthetic import has_batchnorm, synthesize_inputs
from ghostify.utils import first_line

__all__ = ["transfer_init", "as_calibration_tensor", "DEFAULT_CALIB_SAMPLES"]

DEFAULT_CALIB_SAMPLES = 256


def as_calibration_tensor(data: Any, max_samples: int | None = None) -> torch.Tensor | None:
    """Calibration inputs as one float (N, C, H, W) tensor.

    Accepts a tensor, a data spec string (``fashion-mnist:DIR``...; see ghostify.data_specs), a
    Dataset, a DataLoader or any iterable of tensors / (input, label) pairs. Labels are ignored.
    """
    if data is None:
        return None
    if isinstance(data, str):
        from ghostify.data.specs import load_data

        data = load_data(data, train=True, max_samples=max_samples).images
    if isinstance(data, torch.Tensor):
        x = data
    else:
        chunks: list[torch.Tensor] = []
        count = 0
        items: Iterable[Any] = (data[i] for i in range(len(data))) if hasattr(data, "__getitem__") and hasattr(
            data, "__len__") and not isinstance(data, (list, tuple)) else data
        try:
            for item in items:
                x = item[0] if isinstance(item, (tuple, list)) else item
                if not isinstance(x, torch.Tensor):
                    raise GhostifyError(f"calibration data must yield tensors, got {type(x).__name__}")
                x = x if x.dim() == 4 else x.unsqueeze(0)
                chunks.append(x)
                count += x.shape[0]
                if max_samples is not None and count >= max_samples:
                    break
        except TypeError:
            raise GhostifyError(f"calibration data must be a tensor, a data spec or an iterable of tensors, "
                                f"got {type(data).__name__}") from None
        if not chunks:
            raise GhostifyError("calibration data is empty")
        x = torch.cat(chunks)
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4:
        raise GhostifyError(f"calibration data must be images (N, C, H, W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise GhostifyError("calibration data must be float images, normalized as the model expects "
                            f"(got {x.dtype}); data specs do this for you")
    if x.shape[0] == 0:
        raise GhostifyError("calibration data is empty")
    return x[:max_samples] if max_samples is not None else x


class _Stop(Exception):
    """Raised by a capture hook: nothing after the captured layer needs to run."""


@torch.no_grad()
def _capture(model: nn.Module, name: str, X: torch.Tensor, what: str, chunk: int) -> torch.Tensor | None:
    """The input (``what="input"``) or output of submodule ``name`` for every sample of X."""
    mod = model.get_submodule(name)
    got: list[torch.Tensor] = []

    def pre(_m: nn.Module, inp: tuple) -> None:
        got.append(inp[0].detach())
        raise _Stop

    def post(_m: nn.Module, _inp: tuple, out: torch.Tensor) -> None:
        got.append(out.detach())
        raise _Stop

    handle = mod.register_forward_pre_hook(pre) if what == "input" else mod.register_forward_hook(post)
    try:
        for i in range(0, X.shape[0], chunk):
            before = len(got)
            try:
                model(X[i:i + chunk])
            except _Stop:
                pass
            except Exception as exc:
                raise GhostifyError(f"the model rejected the calibration data of shape {tuple(X.shape)}: "
                                    f"{first_line(exc, 200)}") from exc
            if len(got) == before:  # the layer did not run for this input
                return None
    finally:
        handle.remove()
    return torch.cat(got)


def _parts(original: nn.Module, layer: LayerPlan, ghost: GhostModule) -> LayerParts:
    conv = original.get_submodule(layer.name)
    norm = None
    if isinstance(ghost.primary_conv[1], nn.BatchNorm2d) and layer.fused:
        found = original.get_submodule(layer.fused[0])
        norm = found if isinstance(found, nn.BatchNorm2d) else None
    act = None if isinstance(ghost.primary_conv[2], nn.Identity) else copy.deepcopy(ghost.primary_conv[2])
    return LayerParts(conv=conv, norm=norm, act=act)


def _identity_assignment(n: int) -> Assignment:
    return Assignment(intrinsic=list(range(n)), ghost_of={})


def _fit_data_free(ghost: GhostModule, parts: LayerParts) -> float:
    n, m = ghost.out_channels, ghost.intrinsic_channels
    if ghost.cheap_operation is None:
        return 0.0
    pf = weight_space_fit(parts, ghost.d)
    a = choose(pf.E, n, m, ghost.s, parts.conv.groups)
    apply_fit(ghost, parts, a, pf)
    scale, _ = parts.pre_act_affine()
    weights = (parts.conv.weight.detach().float().flatten(1).pow(2).sum(1) * scale.float().cpu() ** 2)
    return pf.total(a, weights.cpu())


def _fit_data_aware(ghost: GhostModule, parts: LayerParts, Xin: torch.Tensor, Z: torch.Tensor,
                    refine_steps: int, lr: float, batch_size: int, seed: int) -> float:
    n, m = ghost.out_channels, ghost.intrinsic_channels
    with torch.no_grad():
        H = torch.cat([parts.after_conv(parts.conv(Xin[i:i + 64])) for i in range(0, Xin.shape[0], 64)])
        T = parts.after_conv(Z)
    if ghost.cheap_operation is None:
        a = _identity_assignment(n)
        apply_fit(ghost, parts, a, None)
    else:
        pf = data_fit(H.float().cpu(), Z.float().cpu(), ghost.d, intercept_slot(ghost))
        a = choose(pf.E, n, m, ghost.s, parts.conv.groups)
        apply_fit(ghost, parts, a, pf)
    refine(ghost, Xin, T, refine_steps, lr=lr, batch_size=batch_size, seed=seed)
    recalibrate_bn(ghost, Xin)
    ghost.eval()
    with torch.no_grad():
        pred = torch.cat([ghost(Xin[i:i + 64]) for i in range(0, Xin.shape[0], 64)])
    return relative_mse(pred, T)


@torch.no_grad()
def _execution_order(converted: nn.Module, layers: list[LayerPlan], ghosts: dict[str, GhostModule],
                     X0: torch.Tensor | None) -> list[LayerPlan]:
    """Layers in the order they run: the sequential fit needs every upstream layer fitted first."""
    if X0 is None:
        return list(layers)
    seen: list[str] = []
    handles = [mod.register_forward_pre_hook(lambda _m, _i, name=name: seen.append(name))
               for name, mod in ghosts.items()]
    try:
        converted(X0[:1])
    except Exception as exc:
        raise GhostifyError(f"the model rejected the calibration data of shape {tuple(X0.shape)}: "
                            f"{first_line(exc, 200)}") from exc
    finally:
        for h in handles:
            h.remove()
    rank = {}
    for name in seen:
        rank.setdefault(name, len(rank))
    return sorted(layers, key=lambda layer: rank.get(layer.name, len(rank)))


def transfer_init(
    original: nn.Module,
    converted: nn.Module,
    plan: ConversionPlan,
    calibration_data: Any = None,
    *,
    max_samples: int | None = None,
    refine_steps: int = 500,
    lr: float = 1e-3,
    batch_size: int = 32,
    seed: int = 0,
    input_size: Sequence[int] | None = None,
    synthetic_samples: int = 256,
    synthetic_steps: int = 300,
) -> None:
    """Fill every converted Ghost module from the original convolution (in place).

    Args:
        original: the model before conversion (read only).
        converted: the output of the conversion pass; its Ghost modules are overwritten.
        plan: the conversion plan; ``transfer_error`` / ``transfer_fit`` are set per layer.
        calibration_data: unlabeled inputs (see :func:`as_calibration_tensor`), or None for the
            data-free fit in weight space.
        max_samples: use at most this many calibration inputs.
        refine_steps, lr, batch_size: the joint refinement of each layer (Adam; 0 disables it).
        seed: for the refinement's mini-batches.
        input_size: (C, H, W). Without calibration data and with BatchNorm in the model, the fit
            runs on ``synthetic_samples`` inputs distilled from the BatchNorm statistics
            (:mod:`ghostify.transfer.synthetic`, ``synthetic_steps`` Adam steps); without
            ``input_size`` (or BatchNorm) it falls back to the weight-space fit.
    """
    if original is converted:
        raise GhostifyError("transfer init needs the original model: convert with inplace=False")
    X0 = as_calibration_tensor(calibration_data, max_samples)
    fit_label = "calibration"
    if X0 is None and input_size is not None and has_batchnorm(original):
        X0 = synthesize_inputs(original, input_size, synthetic_samples, synthetic_steps, seed=seed)
        fit_label = "synthetic"
    ghosts = {name: mod for name, mod in converted.named_modules() if isinstance(mod, GhostModule)}
    p = next(converted.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
    modes = (original.training, converted.training)
    original.eval()
    converted.eval()
    chunk = 64
    try:
        if X0 is not None:
            X0 = X0.to(device=device, dtype=dtype)
        for layer in _execution_order(converted, plan.converted, ghosts, X0):
            ghost = ghosts.get(layer.name)
            if ghost is None:  # pragma: no cover - the pass always puts the module at the conv's name
                continue
            parts = _parts(original, layer, ghost)
            Xin = Z = None
            if X0 is not None and not (layer.note and "called" in layer.note):
                Xin = _capture(converted, layer.name, X0, "input", chunk)
                Z = _capture(original, layer.name, X0, "output", chunk) if Xin is not None else None
            if Xin is None or Z is None:
                layer.transfer_error = round(_fit_data_free(ghost, parts), 6)
                layer.transfer_fit = "weights"
            else:
                err = _fit_data_aware(ghost, parts, Xin, Z, refine_steps, lr, batch_size, seed)
                layer.transfer_error = round(err, 6)
                layer.transfer_fit = fit_label
    finally:
        original.train(modes[0])
        converted.train(modes[1])
