"""The conversion pass: trace, decide (policy), rewrite each convolution into a Ghost module.

``conv -> BatchNorm -> activation`` chains become one paper-form Ghost module carrying that
BatchNorm and activation (primary conv->BN->act, cheap conv->BN->act), so downstream graph
optimizers (onnxruntime's Conv+BN+act fusion) still see conv->BN->act. A bare conv (or
conv->BN) becomes the linear form. When fx cannot trace the model, modules are swapped in
place (a Ghost module is a drop-in; :mod:`ghostify.fx.swap`) and the plan records which fusions
were lost. The pass gives every Ghost module PyTorch's default init; ``ghostify.convert``
decides what happens to the weights next.
"""

from __future__ import annotations

import copy

from torch import fx, nn

from ghostify.fx.decide import decide, layer_plan, supported_conv_types
from ghostify.fx.facts import GraphFacts, convs_inside_ghosts, is_conv
from ghostify.fx.lift import is_exported_graph, lift_exported
from ghostify.fx.patterns import activation_types, node_chain
from ghostify.fx.swap import swap_modules
from ghostify.fx.trace import trace
from ghostify.layers.ghost import GhostModule
from ghostify.plan import ConversionPlan
from ghostify.policy import GhostConfig
from ghostify.utils import first_line, set_submodule

__all__ = ["rewrite"]


def _replace_chain(gm: fx.GraphModule, node: fx.Node, tail: fx.Node) -> None:
    """The Ghost module now computes conv -> norm -> act: route the tail's readers to it, drop the rest."""
    if tail is node:
        return
    tail.replace_all_uses_with(node)
    chain, cur = [], tail
    while cur is not node:  # erase from the tail back to the conv: act first, then norm
        chain.append(cur)
        cur = cur.args[0]
    for n in chain:
        gm.graph.erase_node(n)


def _rewrite_graph(gm: fx.GraphModule, config: GhostConfig, plan: ConversionPlan) -> None:
    facts = GraphFacts.of(gm)
    supported = supported_conv_types()
    act_types = activation_types()
    for node in list(gm.graph.nodes):
        name = str(node.target)
        conv = facts.modules.get(name) if node.op == "call_module" else None
        if not is_conv(conv):
            continue
        layer = decide(config, name, conv, name in facts.stems, name in facts.inside_ghosts, supported)
        plan.layers.append(layer)
        if layer.converted and facts.reads_parameters_of(name):
            layer.converted = False  # a Ghost module has no .weight: the read would break
            layer.reason = "the forward reads this convolution's parameters directly; left alone to keep that working"
        if not layer.converted:
            continue
        if facts.calls[name] > 1:
            layer.note = f"called {facts.calls[name]} times: converted without folding its norm/activation"
            chain = None
        elif config.fuse:
            chain = node_chain(node, facts.modules, facts.calls, act_types)
            layer.fused = list(chain.fused)
        else:
            chain = None
        norm, act = (chain.norm, chain.act) if chain is not None else (None, None)
        layer.form = "paper" if (norm is not None or act is not None) else "linear"
        set_submodule(gm, name, GhostModule.from_conv(conv, layer.s, layer.d, norm=norm, act=act))
        if chain is not None:
            _replace_chain(gm, node, chain.tail)
    gm.graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()


def _record_hidden_convs(source: nn.Module, converted: nn.Module, plan: ConversionPlan) -> None:
    """Convolutions the rewrite never saw as nodes still get a reason.

    ``source`` is the traced module (it keeps every submodule); ``converted`` is the result
    (fx drops submodules the traced forward never calls).
    """
    seen = {layer.name for layer in plan.layers}
    new_ghosts = {layer.name for layer in plan.converted}
    ghost_parts = convs_inside_ghosts(source)
    called = ({str(n.target) for n in converted.graph.nodes if n.op == "call_module"}
              if isinstance(converted, fx.GraphModule) else None)
    for name, mod in source.named_modules():
        if not is_conv(mod) or name in seen or any(name.startswith(g + ".") for g in new_ghosts):
            continue
        parts = name.split(".")
        owner = next((".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)
                      if called is None or ".".join(parts[:i]) in called), None)
        if name in ghost_parts:
            reason = "already part of a Ghost module"
        elif owner is not None:
            reason = f"inside {type(source.get_submodule(owner)).__name__}, which fx treats as one opaque leaf module"
        else:
            reason = ("not called by the traced forward (e.g. a training-only auxiliary head); "
                      "absent from the converted graph")
        plan.layers.append(layer_plan(name, mod, False, plan.config["s"], plan.config["d"], reason))
    order = {n: i for i, (n, _) in enumerate(source.named_modules(remove_duplicate=False))}
    plan.layers.sort(key=lambda layer: order.get(layer.name, len(order)))


def rewrite(model: nn.Module, config: GhostConfig, *, inplace: bool = False) -> tuple[nn.Module, ConversionPlan]:
    """The pass alone: ``model`` (copied unless ``inplace``) with its convolutions swapped for Ghost
    modules as ``config`` decides, and the plan saying what happened to every convolution.

    Tries fx tracing through the libraries' leaf modules, then with them opaque, then swaps
    modules in place (``inplace`` only ever applies to that last mode: fx builds a new module).
    """
    work = model if inplace else copy.deepcopy(model)
    if is_exported_graph(work):  # a torch.export program: rebuild conv/BN modules first
        lift_exported(work)
    plan = ConversionPlan(config=config.to_dict(), mode="fx")
    gm: nn.Module
    try:
        gm = trace(work)
    except Exception:  # fx raises many kinds of errors on dynamic control flow
        try:  # again, keeping the libraries' leaf modules opaque
            gm = trace(work, library_leaves=True)
        except Exception as exc:
            gm = work
            plan.mode = "module-swap"
            swap_modules(gm, config, plan, first_line(exc, 200, with_type=True))
        else:
            _rewrite_graph(gm, config, plan)
            plan.lost_optimizations.append(
                "fx could trace the model only with timm/torchvision leaf modules kept opaque; "
                "convolutions inside them were left alone")
    else:
        _rewrite_graph(gm, config, plan)
    _record_hidden_convs(work, gm, plan)
    return gm, plan
