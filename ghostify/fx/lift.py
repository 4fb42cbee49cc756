"""Lift a torch.export graph (``ExportedProgram.module()``) back to modules the pass can rewrite.

An exported program calls ``aten.conv2d`` / ``aten.batch_norm`` on ``get_attr`` weights; the
rewrite looks for ``nn.Conv2d`` / ``nn.BatchNorm2d`` modules. This pass rebuilds those modules
around the *same* parameter objects, at the qualified name the weights already live under
(``layer1.0.conv1.weight`` -> module ``layer1.0.conv1``), and replaces each call by a
``call_module`` node. Activations stay ``aten`` calls; the rewrite recognises them.
"""

from __future__ import annotations

import torch
from torch import fx, nn

__all__ = ["is_exported_graph", "lift_exported"]

_aten = torch.ops.aten


def is_exported_graph(model: nn.Module) -> bool:
    """A GraphModule whose nodes call aten operators (what torch.export produces)."""
    return isinstance(model, fx.GraphModule) and any(
        isinstance(n.target, torch._ops.OpOverload) for n in model.graph.nodes if n.op == "call_function")


def _attr(gm: fx.GraphModule, node: object) -> str | None:
    return str(node.target) if isinstance(node, fx.Node) and node.op == "get_attr" else None


def _install(gm: fx.GraphModule, weight_name: str, module: nn.Module) -> str:
    """Put ``module`` where its weight lives (replacing the plain container holding it)."""
    name = weight_name.rpartition(".")[0] if weight_name.endswith(".weight") else weight_name.replace(".", "_") + "_mod"
    parent_name, _, leaf = name.rpartition(".")
    parent = gm.get_submodule(parent_name) if parent_name else gm
    old = getattr(parent, leaf, None) if leaf else None
    if isinstance(old, nn.Module):
        for child_name, child in old.named_children():  # keep anything else the container held
            module.add_module(child_name, child)
    setattr(parent, leaf, module)
    return name


def _conv(gm: fx.GraphModule, node: fx.Node) -> bool:
    args = list(node.args) + [None] * (7 - len(node.args))
    x, w, b, stride, padding, dilation, groups = args[:7]
    w_name, b_name = _attr(gm, w), _attr(gm, b)
    if w_name is None or (b is not None and b_name is None) or isinstance(padding, str):
        return False
    weight = gm.get_parameter(w_name) if w_name in dict(gm.named_parameters()) else None
    if weight is None or weight.dim() != 4:
        return False
    groups = groups or 1
    conv = nn.Conv2d(weight.shape[1] * groups, weight.shape[0], tuple(weight.shape[2:]), stride=tuple(stride or [1, 1]),
                     padding=tuple(padding or [0, 0]), dilation=tuple(dilation or [1, 1]), groups=groups,
                     bias=b is not None, device="meta")
    conv.weight = weight
    if b_name is not None:
        conv.bias = gm.get_parameter(b_name)
    name = _install(gm, w_name, conv)
    with gm.graph.inserting_before(node):
        new = gm.graph.call_module(name, (x,))
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)
    return True


def _batch_norm(gm: fx.GraphModule, node: fx.Node) -> bool:
    x, w, b, mean, var, training, momentum, eps = list(node.args[:8])
    names = [_attr(gm, t) for t in (w, b, mean, var)]
    if training or any(n is None for n in names):
        return False
    weight = gm.get_parameter(names[0])
    bn = nn.BatchNorm2d(weight.shape[0], eps=eps, momentum=momentum, device="meta")
    bn.weight, bn.bias = weight, gm.get_parameter(names[1])
    bn.running_mean, bn.running_var = gm.get_buffer(names[2]), gm.get_buffer(names[3])
    tracked = names[2].rpartition(".")[0] + ".num_batches_tracked"
    try:
        bn.num_batches_tracked = gm.get_buffer(tracked)
    except AttributeError:
        bn.num_batches_tracked = torch.zeros((), dtype=torch.long)
    bn.eval()
    name = _install(gm, names[0], bn)
    with gm.graph.inserting_before(node):
        new = gm.graph.call_module(name, (x,))
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)
    return True


def lift_exported(gm: fx.GraphModule) -> fx.GraphModule:
    """Rewrite ``gm`` in place: aten conv2d / batch_norm calls on weights become modules."""
    for node in list(gm.graph.nodes):
        if node.op != "call_function":
            continue
        if node.target is _aten.conv2d.default:
            _conv(gm, node)
        elif node.target is _aten.batch_norm.default and len(node.args) >= 8:
            _batch_norm(gm, node)
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
    return gm
