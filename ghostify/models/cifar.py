"""The CIFAR-10 baselines of GhostNet §4.1 (Tables 3-5): VGG-16 and the CIFAR ResNets.

* ``vgg16_cifar``: the VGG-16 variant of the paper's ref. [60] (widely used for CIFAR): 13
  conv3x3-BN-ReLU layers in five blocks (64, 64 | 128, 128 | 256 x3 | 512 x3 | 512 x3), a 2x2
  max-pool after each block, then 512 -> 512 (BN, ReLU, dropout) -> classes. At 32x32: 15.0 M
  weights, 313 M MACs.
* ``resnet{20,32,44,56,110}_cifar``: He et al.'s CIFAR ResNets, depth 6n+2: a 3x3 stem with 16
  maps, three stages of n basic blocks (16, 32, 64 maps; stride 2 at the start of the second and
  third), global pool, FC. The downsampling shortcut is a 1x1 conv + BN (option B), which is
  what the paper's 0.85 M / 125 M for ResNet-56 counts.

The Ghost versions (Ghost-VGG-16, Ghost-ResNet-56) are not written here: they are
``ghostify.convert(model, s, d)`` outputs.
"""

from __future__ import annotations

import torch
from torch import nn

from ghostify.errors import GhostifyError
from ghostify.models._registry import register_model

__all__ = ["VGGCifar", "ResNetCifar", "BasicBlock", "vgg16_cifar", "resnet20_cifar", "resnet32_cifar",
           "resnet44_cifar", "resnet56_cifar", "resnet110_cifar"]

_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def _check(in_chans: int, num_classes: int) -> None:
    if in_chans < 1 or num_classes < 1:
        raise GhostifyError(f"in_chans and num_classes must be >= 1, got {in_chans} and {num_classes}")


class VGGCifar(nn.Module):
    """VGG with BatchNorm for 32x32 inputs (any size divisible by 32 works: the pool is global)."""

    def __init__(self, cfg: list[int | str] | None = None, num_classes: int = 10, in_chans: int = 3,
                 drop_rate: float = 0.5) -> None:
        super().__init__()
        _check(in_chans, num_classes)
        layers: list[nn.Module] = []
        c = in_chans
        for v in cfg or _VGG16:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, int(v), 3, padding=1, bias=False), nn.BatchNorm2d(int(v)),
                           nn.ReLU(inplace=True)]
                c = int(v)
        self.features = nn.Sequential(*layers)
        # after five pools a 32x32 input is 1x1; the pool makes other sizes work too
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(c, 512), nn.BatchNorm1d(512), nn.ReLU(inplace=True), nn.Dropout(drop_rate),
            nn.Linear(512, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN + shortcut, ReLU (He et al. 2016)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                            nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + identity)


class ResNetCifar(nn.Module):
    """ResNet-(6n+2) for CIFAR: stem 16 maps, stages of n basic blocks at 16/32/64 maps."""

    def __init__(self, depth: int = 56, num_classes: int = 10, in_chans: int = 3) -> None:
        super().__init__()
        _check(in_chans, num_classes)
        if depth < 8 or (depth - 2) % 6:
            raise GhostifyError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110...), got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_chans, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        c = 16
        stages = []
        for width, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(c, width, stride if i == 0 else 1))
                c = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


@register_model
def vgg16_cifar(num_classes: int = 10, in_chans: int = 3) -> VGGCifar:
    """VGG-16 for CIFAR (Tables 3-5 baseline: 15.0 M weights, 313 M FLOPs)."""
    return VGGCifar(num_classes=num_classes, in_chans=in_chans)


@register_model
def resnet20_cifar(num_classes: int = 10, in_chans: int = 3) -> ResNetCifar:
    return ResNetCifar(20, num_classes, in_chans)


@register_model
def resnet32_cifar(num_classes: int = 10, in_chans: int = 3) -> ResNetCifar:
    return ResNetCifar(32, num_classes, in_chans)


@register_model
def resnet44_cifar(num_classes: int = 10, in_chans: int = 3) -> ResNetCifar:
    return ResNetCifar(44, num_classes, in_chans)


@register_model
def resnet56_cifar(num_classes: int = 10, in_chans: int = 3) -> ResNetCifar:
    """ResNet-56 for CIFAR (Table 5 baseline: 0.85 M weights, 125 M FLOPs)."""
    return ResNetCifar(56, num_classes, in_chans)


@register_model
def resnet110_cifar(num_classes: int = 10, in_chans: int = 3) -> ResNetCifar:
    return ResNetCifar(110, num_classes, in_chans)
