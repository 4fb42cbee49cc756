"""torch.fx side of the conversion: tracing, the graph facts, the op patterns and the rewrite pass."""

from ghostify.fx.decide import supported_conv_types
from ghostify.fx.rewrite import rewrite
from ghostify.fx.trace import GhostTracer, trace

__all__ = ["rewrite", "supported_conv_types", "GhostTracer", "trace"]
