"""The policy's decision for one convolution the pass found, as a row of the plan."""

from __future__ import annotations

import sys

from torch import nn

from ghostify.layers.surgery import plain_conv
from ghostify.plan import LayerPlan
from ghostify.policy import GhostConfig

__all__ = ["supported_conv_types", "layer_plan", "decide"]


def supported_conv_types() -> tuple[type, ...]:
    """Convolution classes converted faithfully (the primary conv is a copy of the same class).

    Their forward reads only the standard convolution attributes plus per-output-channel tensors
    (timm's weight-standardised ``gain``), so a copy with fewer filters keeps their meaning;
    tests/test_convert.py checks each against the original numerically. Subclasses that keep
    ``nn.ConvNd``'s forward convert too (:func:`ghostify.layers.surgery.plain_conv`).
    """
    types: list[type] = [nn.Conv1d, nn.Conv2d, nn.Conv3d]
    if "timm" in sys.modules:  # only a model built with timm can hold timm's conv classes
        from timm.layers import Conv2dSame, ScaledStdConv2d, ScaledStdConv2dSame, StdConv2d, StdConv2dSame

        types += [Conv2dSame, StdConv2d, StdConv2dSame, ScaledStdConv2d, ScaledStdConv2dSame]
    return tuple(types)


def layer_plan(name: str, conv: nn.Module, converted: bool, s: int, d: int, reason: str | None) -> LayerPlan:
    return LayerPlan(name=name, type=type(conv).__name__, c=conv.in_channels, n=conv.out_channels,
                     k=tuple(conv.kernel_size), stride=tuple(conv.stride), groups=conv.groups, converted=converted,
                     s=s, d=d, reason=reason)


def decide(config: GhostConfig, name: str, conv: nn.Module, is_stem: bool, inside_ghost: bool,
           supported: tuple[type, ...]) -> LayerPlan:
    """The policy's decision for one convolution, as a plan row."""
    if inside_ghost:
        return layer_plan(name, conv, False, config.s, config.d, "already part of a Ghost module")
    if type(conv) not in supported and not plain_conv(conv):
        return layer_plan(name, conv, False, config.s, config.d,
                          f"{type(conv).__name__} has its own forward; left alone rather than changed in meaning")
    decision = config.decide(name, conv.in_channels, conv.out_channels, tuple(conv.kernel_size), conv.groups,
                             is_stem, type(conv).__name__)
    return layer_plan(name, conv, decision.convert, decision.s, decision.d, decision.reason)
