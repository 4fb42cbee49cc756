"""Building blocks (like ``timm.layers``): the Ghost module and friends."""

from ghostify.layers.ghost import GhostModule, intrinsic_channels, validate_ratio_and_kernel

__all__ = ["GhostModule", "intrinsic_channels", "validate_ratio_and_kernel"]
