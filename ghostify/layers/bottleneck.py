"""The Ghost bottleneck (G-bneck, GhostNet §3.2, Fig. 3) and its squeeze-and-excite.

A G-bneck is two stacked Ghost modules: an *expansion* module (with ReLU) raising the channels
to ``#exp``, and a *projection* module (no ReLU, as MobileNetV2 suggests) bringing them to
``#out``; a shortcut adds the input. With stride 2 a depthwise stride-2 conv + BN sits between
the two modules and the shortcut downsamples (depthwise conv + BN + 1x1 conv + BN). The Ghost
modules use a pointwise primary convolution (k=1), s=2 and d=3 (§4.2.1).

Submodule names (``ghost1``, ``conv_dw``, ``bn_dw``, ``se``, ``ghost2``, ``shortcut``;
``conv_reduce``/``conv_expand`` in the SE) follow the official code and timm, so their
state_dicts load here unchanged.
"""

from __future__ import annotations

from torch import nn

from ghostify.layers.ghost import GhostModule

__all__ = ["make_divisible", "SqueezeExcite", "GhostBottleneck"]


def make_divisible(v: float, divisor: int = 4, min_value: int | None = None, round_limit: float = 0.9) -> int:
    """Round a channel count ``v`` to the nearest multiple of ``divisor``.

    Never below ``min_value`` (default ``divisor``) and never more than 10% below ``v``: the
    rounding the official GhostNet code (and MobileNet's ``_make_divisible``) applies, so a
    width multiplier gives the same layer sizes as the published checkpoints.
    """
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < round_limit * v:
        new_v += divisor
    return new_v


class SqueezeExcite(nn.Module):
    """Squeeze-and-excite with a hard-sigmoid gate (MobileNetV3 style, as GhostNet uses it).

    Global average pool -> 1x1 conv to ``make_divisible(channels * rd_ratio, 4)`` -> ReLU ->
    1x1 conv back to ``channels`` -> hard sigmoid, which rescales the input channel-wise.
    """

    def __init__(self, channels: int, rd_ratio: float = 0.25, divisor: int = 4) -> None:
        super().__init__()
        rd_channels = make_divisible(channels * rd_ratio, divisor)
        self.conv_reduce = nn.Conv2d(channels, rd_channels, 1, bias=True)
        self.act1 = nn.ReLU(inplace=True)
        self.conv_expand = nn.Conv2d(rd_channels, channels, 1, bias=True)
        self.gate = nn.Hardsigmoid()

    def forward(self, x):
        scale = x.mean((2, 3), keepdim=True)
        scale = self.conv_expand(self.act1(self.conv_reduce(scale)))
        return x * self.gate(scale)


class GhostBottleneck(nn.Module):
    """One G-bneck: Ghost expansion (ReLU) -> [dw stride-2 + BN] -> [SE] -> Ghost projection + shortcut.

    Args:
        in_channels: input channels.
        mid_channels: expansion size (``#exp`` of Table 1).
        out_channels: output channels (``#out``).
        dw_kernel_size: kernel of the stride-2 depthwise conv and of the shortcut's depthwise conv.
        stride: 1 or 2.
        se_ratio: squeeze ratio of the SE module; 0 for no SE.
        ratio, dw_size: the Ghost modules' ``s`` and ``d`` (the paper uses 2 and 3).
    """

    def __init__(
        self,
        in_channels: int,
        mid_channels: int,
        out_channels: int,
        dw_kernel_size: int = 3,
        stride: int = 1,
        se_ratio: float = 0.0,
        ratio: int = 2,
        dw_size: int = 3,
    ) -> None:
        super().__init__()
        self.stride = stride
        # Expansion: pointwise primary conv (k=1), BN and ReLU after both halves.
        self.ghost1 = GhostModule(in_channels, mid_channels, kernel_size=1, ratio=ratio, dw_size=dw_size,
                                  act_layer=nn.ReLU)
        if stride > 1:  # the stride-2 depthwise conv between the two Ghost modules (no activation)
            self.conv_dw = nn.Conv2d(mid_channels, mid_channels, dw_kernel_size, stride,
                                     (dw_kernel_size - 1) // 2, groups=mid_channels, bias=False)
            self.bn_dw = nn.BatchNorm2d(mid_channels)
        else:
            self.conv_dw = None
            self.bn_dw = None
        self.se = SqueezeExcite(mid_channels, se_ratio) if se_ratio and se_ratio > 0 else None
        # Projection: linear (no ReLU), so the residual sum is not clipped.
        self.ghost2 = GhostModule(mid_channels, out_channels, kernel_size=1, ratio=ratio, dw_size=dw_size,
                                  act_layer=None)
        if in_channels == out_channels and stride == 1:
            self.shortcut = nn.Sequential()
        else:  # downsampling shortcut: depthwise conv + BN, then 1x1 conv + BN to the new width
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, in_channels, dw_kernel_size, stride, (dw_kernel_size - 1) // 2,
                          groups=in_channels, bias=False),
                nn.BatchNorm2d(in_channels),
                nn.Conv2d(in_channels, out_channels, 1, 1, 0, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x):
        residual = x
        x = self.ghost1(x)
        if self.conv_dw is not None:
            x = self.bn_dw(self.conv_dw(x))
        if self.se is not None:
            x = self.se(x)
        x = self.ghost2(x)
        return x + self.shortcut(residual)
