"""torch.fx side of the conversion: tracing and the rewrite pass."""

from ghostify.fx.rewrite import convert, supported_conv_types
from ghostify.fx.trace import GhostTracer, trace

__all__ = ["convert", "supported_conv_types", "GhostTracer", "trace"]
