"""The conversion policy: which convolutions become Ghost modules, with which s and d, and why not."""

from ghostify.policy.config import GhostConfig, LayerDecision
from ghostify.policy.equations import cheap_kernel, theoretical_compression, theoretical_speedup

__all__ = ["GhostConfig", "LayerDecision", "theoretical_speedup", "theoretical_compression", "cheap_kernel"]
