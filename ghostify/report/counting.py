"""Counting parameters and MACs: one convention, stated once.

**FLOPs means multiply-accumulates (MACs), as the paper counts them** (ResNet-50 = 4.1 G):
one fused multiply-add of a convolution or a linear layer (incl. matmul/einsum) is one FLOP;
BatchNorm is folded into the preceding layer at inference and counts nothing; activations,
pooling, additions and concatenations count nothing.

Counting uses fvcore's jit-based ``JitModelAnalysis`` with handles for exactly those ops; when
the jit tracer cannot run a model, forward hooks on convolution/Linear modules give the same count
for every model made of modules (the result says which counter ran).

The example ``x`` is what the model takes (:func:`ghostify.forward.example_input`): a batch of
one, or a list of one image for a detector. MACs are per example: a detector's RoI heads run
on every proposal of the image, so their count is per image, not per row.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ghostify.forward import batch_size

__all__ = ["MacCount", "count_macs", "count_params", "forward_with_hooks", "CONVENTION"]

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)

CONVENTION = ("FLOPs = multiply-accumulates (MACs) of convolution and linear layers, as the paper "
              "counts them; BatchNorm folded, activations/pooling/additions free")


@dataclass
class MacCount:
    total: int
    by_module: dict[str, int] = field(default_factory=dict)
    counter: str = "fvcore"


def _mac_handles() -> dict[str, object]:
    from fvcore.nn.jit_handles import (
        addmm_flop_jit,
        bmm_flop_jit,
        conv_flop_jit,
        einsum_flop_jit,
        linear_flop_jit,
        matmul_flop_jit,
    )

    return {
        "aten::_convolution": conv_flop_jit,
        "aten::addmm": addmm_flop_jit,
        "aten::linear": linear_flop_jit,
        "aten::matmul": matmul_flop_jit,
        "aten::mm": matmul_flop_jit,
        "aten::bmm": bmm_flop_jit,
        "aten::einsum": einsum_flop_jit,
    }


def _count_fvcore(model: nn.Module, x: Any) -> MacCount:
    with warnings.catch_warnings():  # fvcore's import trips torch.jit deprecation warnings
        warnings.simplefilter("ignore")
        from fvcore.nn.jit_analysis import JitModelAnalysis

    analysis = JitModelAnalysis(model, (x,))
    analysis.set_op_handle(**_mac_handles())
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    analysis.tracer_warnings("none")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        by_module = {k: int(v) for k, v in analysis.by_module().items()}
    return MacCount(total=by_module.get("", int(analysis.total())), by_module=by_module, counter="fvcore")


def _count_hooks(model: nn.Module, x: Any) -> MacCount:
    """Convolution / Linear MACs from output shapes (used when jit tracing fails), Conv1d to Conv3d."""
    own: dict[str, int] = {}
    examples = batch_size(x)  # not the output's first axis: a RoI head's rows are the image's proposals

    def hook(name: str):
        def fn(mod: nn.Module, inp: tuple, out: torch.Tensor) -> None:
            if isinstance(mod, _CONVS):
                per_out = (mod.in_channels // mod.groups) * math.prod(mod.kernel_size)
            else:
                per_out = mod.in_features
            own[name] = own.get(name, 0) + out.numel() * per_out // examples
        return fn

    forward_with_hooks(model, x, {name: hook(name) for name, mod in model.named_modules()
                                  if isinstance(mod, (*_CONVS, nn.Linear))})
    by_module: dict[str, int] = {"": 0}
    for name, macs in own.items():
        parts = name.split(".")
        for i in range(len(parts) + 1):
            key = ".".join(parts[:i])
            by_module[key] = by_module.get(key, 0) + macs
    return MacCount(total=by_module[""], by_module=by_module, counter="hooks")


def forward_with_hooks(model: nn.Module, x: Any, hooks: dict[str, Callable[..., None]]) -> None:
    """One no-grad forward pass with forward hooks on the named submodules, removed afterwards."""
    modules = dict(model.named_modules())
    handles = [modules[name].register_forward_hook(fn) for name, fn in hooks.items()]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()


def count_macs(model: nn.Module, x: Any) -> MacCount:
    """MACs of one forward pass on ``x`` (the model's input, one example expected), total and per module name."""
    was_training = model.training
    model.eval()
    try:
        try:
            return _count_fvcore(model, x)
        except Exception:  # the jit tracer rejects some models; hooks count what modules do
            return _count_hooks(model, x)
    finally:
        model.train(was_training)


def count_params(model: nn.Module, prefix: str | None = None) -> int:
    """Number of parameters (shared ones once), of the whole model or of submodule ``prefix``."""
    mod = model if not prefix else model.get_submodule(prefix)
    return sum(p.numel() for p in mod.parameters())
