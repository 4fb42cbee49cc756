"""The fallback when fx cannot trace a model: swap convolutions for Ghost modules in place.

Inside an ``nn.Sequential`` the data flow is known, so adjacent conv, norm, act fold into a
paper-form module (the same chain pattern as the graph rewrite, :func:`ghostify.fx.patterns.match_chain`);
everywhere else a convolution becomes the linear form and its norm/act stay after the concat
(the fusion downstream optimizers would have done is lost, and the plan says so).
"""

from __future__ import annotations

import copy

from torch import nn

from ghostify.fx.decide import decide, supported_conv_types
from ghostify.fx.facts import convs_inside_ghosts, is_conv
from ghostify.fx.patterns import NORM_MODULES, Chain, activation_types, match_chain
from ghostify.layers.ghost import GhostModule
from ghostify.plan import ConversionPlan
from ghostify.policy import GhostConfig
from ghostify.utils import set_submodule

__all__ = ["swap_modules"]


def _sequential_chain(seq: nn.Sequential, seq_name: str, i: int, act_types: tuple[type, ...]) -> Chain[int]:
    keys = list(seq._modules.keys())

    def step(j: int) -> int | None:
        return j + 1 if j + 1 < len(keys) else None

    def at(j: int, types: tuple[type, ...], copy_it: bool) -> tuple[nn.Module, str] | None:
        mod = seq._modules[keys[j]]
        if type(mod) not in types:
            return None
        return (copy.deepcopy(mod) if copy_it else mod), f"{seq_name}.{keys[j]}" if seq_name else keys[j]

    return match_chain(i, step, lambda j, _prev: at(j, NORM_MODULES, False),
                       lambda j, _prev: at(j, act_types, True))


def _plain_sequential(module: nn.Module) -> bool:
    """An ``nn.Sequential`` whose forward runs its children in order (torchvision's
    ``Conv2dNormActivation`` is a subclass that keeps that forward): its data flow is known."""
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def _swap_in_sequentials(model: nn.Module, config: GhostConfig, plan: ConversionPlan, first_conv: str | None,
                         inside: set[str]) -> set[str]:
    supported, act_types = supported_conv_types(), activation_types()
    handled: set[str] = set()
    for seq_name, seq in list(model.named_modules()):
        if not _plain_sequential(seq) or seq_name in inside:
            continue
        keys = list(seq._modules.keys())
        for i, key in enumerate(keys):
            conv = seq._modules[key]
            name = f"{seq_name}.{key}" if seq_name else key
            if not is_conv(conv) or name in handled:
                continue
            handled.add(name)
            layer = decide(config, name, conv, name == first_conv, False, supported)
            plan.layers.append(layer)
            if not layer.converted:
                continue
            chain = _sequential_chain(seq, seq_name, i, act_types) if config.fuse else Chain(i)
            for j in range(i + 1, chain.tail + 1):  # the folded norm/act now live inside the Ghost module
                seq._modules[keys[j]] = nn.Identity()
            layer.fused = list(chain.fused)
            layer.form = "paper" if (chain.norm is not None or chain.act is not None) else "linear"
            seq._modules[key] = GhostModule.from_conv(conv, layer.s, layer.d, norm=chain.norm, act=chain.act)
    return handled


def swap_modules(model: nn.Module, config: GhostConfig, plan: ConversionPlan, why: str) -> None:
    """Rewrite ``model`` in place (see the module docstring); ``why`` says why fx failed."""
    supported = supported_conv_types()
    inside = convs_inside_ghosts(model)
    first_conv = next((n for n, m in model.named_modules() if is_conv(m)), None)
    handled = _swap_in_sequentials(model, config, plan, first_conv, inside)
    unfused = 0
    for name, conv in list(model.named_modules()):
        if not is_conv(conv) or name in handled or name in inside or any(name.startswith(h + ".") for h in handled):
            continue
        layer = decide(config, name, conv, name == first_conv, False, supported)
        plan.layers.append(layer)
        if layer.converted:
            layer.form = "linear"
            unfused += 1
            set_submodule(model, name, GhostModule.from_conv(conv, layer.s, layer.d))
    plan.lost_optimizations.append(f"fx could not trace the model ({why}); modules were swapped in place")
    if unfused:
        plan.lost_optimizations.append(
            f"{unfused} convolution(s) outside nn.Sequential became linear Ghost modules: their "
            "BatchNorm/activation now follow the concat and will not fuse into the convolutions")
    order = {n: i for i, (n, _) in enumerate(model.named_modules(remove_duplicate=False))}
    plan.layers.sort(key=lambda layer: order.get(layer.name, len(order)))
