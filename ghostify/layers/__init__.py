"""Building blocks (like ``timm.layers``): the Ghost module and friends."""

from ghostify.layers.bottleneck import GhostBottleneck, SqueezeExcite, make_divisible
from ghostify.layers.ghost import GhostModule, intrinsic_channels, validate_ratio_and_kernel

__all__ = ["GhostModule", "intrinsic_channels", "validate_ratio_and_kernel", "GhostBottleneck", "SqueezeExcite",
           "make_divisible"]
