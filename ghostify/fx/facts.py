"""Facts about a traced graph, computed once and shared by the rewrite and the deploy pass.

Like Torch-Pruning's dependency graph: which module each node calls and how often, which
parameters the forward reads directly, which convolutions read the input with no other layer
in between (the stem), which convolutions already sit inside a Ghost module.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import fx, nn

from ghostify.fx.trace import is_ghost_module
from ghostify.layers.surgery import CONV_TYPES

__all__ = ["GraphFacts", "is_conv", "CONVOLUTIONS", "convs_inside_ghosts"]

CONVOLUTIONS: tuple[type, ...] = tuple(CONV_TYPES.values())  # and their subclasses


def is_conv(module: object) -> bool:
    """A 1-, 2- or 3-D convolution (or a subclass such as timm's Conv2dSame); not a transposed one."""
    return isinstance(module, CONVOLUTIONS)


def convs_inside_ghosts(model: nn.Module) -> set[str]:
    """Qualified names of every submodule of a Ghost module already in ``model``."""
    inside: set[str] = set()
    for name, mod in model.named_modules():
        if is_ghost_module(mod):
            inside.update(f"{name}.{sub}" if name else sub for sub, _ in mod.named_modules() if sub)
    return inside


@dataclass
class GraphFacts:
    """What the passes need to know about ``gm`` before changing it."""

    modules: dict[str, nn.Module]
    calls: dict[str, int] = field(default_factory=dict)  # module name -> call_module nodes calling it
    attr_reads: set[str] = field(default_factory=set)  # parameters/buffers the forward reads directly
    stems: set[str] = field(default_factory=set)  # convolutions reading the input, no layer in between
    inside_ghosts: set[str] = field(default_factory=set)

    @classmethod
    def of(cls, gm: fx.GraphModule) -> GraphFacts:
        facts = cls(modules=dict(gm.named_modules()), inside_ghosts=convs_inside_ghosts(gm))
        after_layer: dict[fx.Node, bool] = {}
        for node in gm.graph.nodes:
            if node.op == "call_module":
                facts.calls[str(node.target)] = facts.calls.get(str(node.target), 0) + 1
            elif node.op == "get_attr":  # e.g. timm's EdgeNeXt reads conv.weight.dtype
                facts.attr_reads.add(str(node.target))
            upstream = any(after_layer.get(a, False) for a in node.all_input_nodes)
            mod = facts.modules.get(str(node.target)) if node.op == "call_module" else None
            is_layer = is_conv(mod) or isinstance(mod, nn.Linear) or (mod is not None and is_ghost_module(mod))
            if is_conv(mod) and not upstream:
                facts.stems.add(str(node.target))
            after_layer[node] = upstream or is_layer
        return facts

    def reads_parameters_of(self, name: str) -> bool:
        return any(t.startswith(name + ".") for t in self.attr_reads)
