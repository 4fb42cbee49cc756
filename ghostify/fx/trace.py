"""Symbolic tracing with the leaf-module and autowrap lists of torchvision and timm.

Convolutions (every 1-, 2- and 3-D ``nn.Conv`` and subclass) and existing Ghost modules are leaves, so each one
appears as a single ``call_module`` node the rewrite can see and replace.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from torch import fx, nn

__all__ = ["GhostTracer", "trace", "is_ghost_module"]


def is_ghost_module(module: nn.Module) -> bool:
    """Ours, timm's, or the official code's Ghost module (all share the class name)."""
    return type(module).__name__.startswith("GhostModule")


def _third_party_lists(model: nn.Module) -> tuple[list[type], list[Callable[..., Any]]]:
    """Leaf modules and autowrap functions registered by timm and torchvision, if in use.

    timm is only imported when the model already uses it (it is slow to import and the lists
    only matter for its own modules).
    """
    leaves: list[type] = []
    functions: list[Callable[..., Any]] = []
    uses_timm = any(type(m).__module__.startswith("timm.") for m in model.modules())
    if uses_timm or "timm" in sys.modules:
        from timm.layers import get_notrace_functions, get_notrace_modules

        leaves += get_notrace_modules()
        functions += [f for f in get_notrace_functions() if callable(f)]
    if any(type(m).__module__.startswith("torchvision.") for m in model.modules()):
        from torchvision.models.feature_extraction import _get_leaf_modules_for_ops

        leaves += _get_leaf_modules_for_ops()
    return leaves, functions


def _holds_conv(m: nn.Module) -> bool:
    return any(isinstance(sub, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) for sub in m.modules())


class GhostTracer(fx.Tracer):
    """An ``fx.Tracer`` whose leaves are convolutions, Ghost modules and the libraries' leaves.

    With ``library_leaves=False`` a library leaf that holds convolutions (torchvision's
    ``Conv2dNormActivation``, ``SqueezeExcitation``...: leaves for feature extraction, not
    because they are untraceable) is traced through, so its convolutions can be rewritten.
    """

    def __init__(self, leaf_types: tuple[type, ...] = (), autowrap_functions: tuple[Callable[..., Any], ...] = (),
                 library_leaves: bool = False):
        super().__init__(autowrap_functions=autowrap_functions)
        self.leaf_types = leaf_types
        self.library_leaves = library_leaves

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) or is_ghost_module(m):
            return True
        if self.leaf_types and isinstance(m, self.leaf_types) and (self.library_leaves or not _holds_conv(m)):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def trace(model: nn.Module, library_leaves: bool = False) -> fx.GraphModule:
    """Trace ``model`` into a GraphModule (raises whatever fx raises when it cannot).

    ``library_leaves=True`` keeps every timm/torchvision leaf module opaque, even those holding
    convolutions: the fallback when tracing through them fails.
    """
    leaves, functions = _third_party_lists(model)
    tracer = GhostTracer(tuple(leaves), tuple(functions), library_leaves)
    graph = tracer.trace(model)
    name = type(model).__name__
    gm = fx.GraphModule(tracer.root, graph, name)
    # Keep what a user (or timm/torchvision) reads from the model object.
    for attr in ("pretrained_cfg", "default_cfg", "num_classes", "feature_info"):
        if hasattr(model, attr) and not hasattr(gm, attr):
            setattr(gm, attr, getattr(model, attr))
    return gm
