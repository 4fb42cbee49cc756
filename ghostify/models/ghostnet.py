"""GhostNet (GhostNet §3.2, Table 1) with a width multiplier alpha.

Stem conv 3x3/2 (16) -> 16 Ghost bottlenecks grouped into stages by input resolution ->
1x1 conv to 960 (+BN+ReLU) -> global average pool -> 1x1 conv to 1280 (+ReLU; not scaled by
alpha) -> dropout 0.2 -> FC. Every other width is ``make_divisible(c * alpha, 4)``.

Table 1 does not list the depthwise kernel of the stride-2 bottlenecks; the official code (and
timm) takes it from MobileNetV3-Large: 3x3, and 5x5 in the 40- and 160-channel stages. We use
the same, and the same parameter names as timm's ``ghostnet_100`` (``conv_stem``, ``bn1``,
``blocks.<stage>.<i>``, ``blocks.9.0.conv``/``bn1``, ``conv_head``, ``classifier``) so that
official / timm state_dicts load unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ghostify.errors import GhostifyError
from ghostify.layers.bottleneck import GhostBottleneck, make_divisible
from ghostify.models._registry import register_model

__all__ = ["GhostNet", "GHOSTNET_CFG", "ghostnet_050", "ghostnet_100", "ghostnet_130"]

# One list per stage; rows: (dw kernel k, #exp, #out, SE ratio, stride) -- Table 1 top to bottom.
GHOSTNET_CFG: list[list[tuple[int, int, int, float, int]]] = [
    [(3, 16, 16, 0.0, 1)],
    [(3, 48, 24, 0.0, 2)],
    [(3, 72, 24, 0.0, 1)],
    [(5, 72, 40, 0.25, 2)],
    [(5, 120, 40, 0.25, 1)],
    [(3, 240, 80, 0.0, 2)],
    [(3, 200, 80, 0.0, 1),
     (3, 184, 80, 0.0, 1),
     (3, 184, 80, 0.0, 1),
     (3, 480, 112, 0.25, 1),
     (3, 672, 112, 0.25, 1)],
    [(5, 672, 160, 0.25, 2)],
    [(5, 960, 160, 0.0, 1),
     (5, 960, 160, 0.25, 1),
     (5, 960, 160, 0.0, 1),
     (5, 960, 160, 0.25, 1)],
]


class ConvBnAct(nn.Module):
    """conv -> BN -> ReLU, named like timm's ``ConvBnAct`` (``conv``, ``bn1``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, 1, kernel_size // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn1(self.conv(x)))


class GhostNet(nn.Module):
    """GhostNet-alpha x (Table 1).

    Args:
        width: the width multiplier alpha (channels ``make_divisible(c * alpha, 4)``).
        num_classes: classifier outputs (1000 for ImageNet).
        in_chans: input image channels.
        drop_rate: dropout before the classifier (0.2 in the paper's code).
        cfg: the bottleneck table (defaults to Table 1).
    """

    def __init__(
        self,
        width: float = 1.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.2,
        cfg: list[list[tuple[int, int, int, float, int]]] | None = None,
    ) -> None:
        super().__init__()
        if width <= 0:
            raise GhostifyError(f"width multiplier must be > 0, got {width}")
        if num_classes < 1 or in_chans < 1:
            raise GhostifyError(f"num_classes and in_chans must be >= 1, got {num_classes} and {in_chans}")
        cfg = GHOSTNET_CFG if cfg is None else cfg
        self.width = width
        self.num_classes = num_classes
        self.drop_rate = drop_rate

        stem = make_divisible(16 * width, 4)
        self.conv_stem = nn.Conv2d(in_chans, stem, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.act1 = nn.ReLU(inplace=True)

        stages: list[nn.Module] = []
        prev = stem
        exp = 16
        for stage in cfg:
            blocks = []
            for k, exp, out, se, stride in stage:
                out_c, mid_c = make_divisible(out * width, 4), make_divisible(exp * width, 4)
                blocks.append(GhostBottleneck(prev, mid_c, out_c, k, stride, se_ratio=se))
                prev = out_c
            stages.append(nn.Sequential(*blocks))
        # the 1x1 conv to 960 (the last #exp, scaled) closes the feature extractor
        last = make_divisible(exp * width, 4)
        stages.append(nn.Sequential(ConvBnAct(prev, last, 1)))
        self.blocks = nn.Sequential(*stages)
        self.num_features = last

        # head: pooled 960 -> 1280 (never scaled) -> classifier
        self.head_hidden_size = 1280
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_head = nn.Conv2d(last, self.head_hidden_size, 1, 1, 0, bias=True)
        self.act2 = nn.ReLU(inplace=True)
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Linear(self.head_hidden_size, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv_stem(x)))
        return self.blocks(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(self.act2(self.conv_head(self.global_pool(x))))
        if self.drop_rate > 0.0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _ghostnet(width: float, **kwargs) -> GhostNet:
    return GhostNet(width=width, **kwargs)


@register_model
def ghostnet_050(num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.2) -> GhostNet:
    """GhostNet 0.5x (Table 7: 2.6 M weights, 42 M FLOPs)."""
    return _ghostnet(0.5, num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate)


@register_model
def ghostnet_100(num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.2) -> GhostNet:
    """GhostNet 1.0x (Table 7: 5.2 M weights, 141 M FLOPs)."""
    return _ghostnet(1.0, num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate)


@register_model
def ghostnet_130(num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.2) -> GhostNet:
    """GhostNet 1.3x (Table 7: 7.3 M weights, 226 M FLOPs)."""
    return _ghostnet(1.3, num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate)
