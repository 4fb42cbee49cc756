"""The conversion pass: trace, decide (policy), rewrite each convolution into a Ghost module.

``conv -> BatchNorm -> activation`` chains become one paper-form Ghost module carrying that
BatchNorm and activation (primary conv->BN->act, cheap conv->BN->act), so downstream graph
optimizers (onnxruntime's Conv+BN+act fusion) still see conv->BN->act. A bare conv (or
conv->BN) becomes the linear form. When fx cannot trace the model, modules are swapped in
place (a Ghost module is a drop-in) and the plan records which fusions were lost.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from ghostify.errors import GhostifyError, NothingToConvertError
from ghostify.fx.lift import is_exported_graph, lift_exported
from ghostify.fx.trace import is_ghost_module, trace
from ghostify.layers.ghost import GhostModule
from ghostify.plan import PLAN_ATTR, ConversionPlan, LayerPlan
from ghostify.policy import GhostConfig

__all__ = ["convert", "supported_conv_types", "INIT_CHOICES"]

INIT_CHOICES = ("random", "transfer")


def supported_conv_types() -> tuple[type, ...]:
    """Convolution classes converted faithfully (the primary conv is a copy of the same class).

    Their forward reads only the standard Conv2d attributes plus per-output-channel tensors
    (timm's weight-standardised ``gain``), so a copy with fewer filters keeps their meaning;
    tests/test_convert.py checks each against the original numerically.
    """
    types: list[type] = [nn.Conv2d]
    if "timm" in sys.modules:  # only a model built with timm can hold timm's conv classes
        from timm.layers import Conv2dSame, ScaledStdConv2d, ScaledStdConv2dSame, StdConv2d, StdConv2dSame

        types += [Conv2dSame, StdConv2d, StdConv2dSame, ScaledStdConv2d, ScaledStdConv2dSame]
    return tuple(types)


# -- activations we can move inside a Ghost module ----------------------------------------------
_ACT_MODULES: tuple[type, ...] = (
    nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish, nn.GELU, nn.LeakyReLU, nn.ELU, nn.Mish,
    nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.CELU, nn.SELU, nn.Softplus,
)


def _timm_act_modules() -> tuple[type, ...]:
    if "timm" not in sys.modules:
        return ()
    from timm.layers import activations as a

    names = ("Swish", "Mish", "Sigmoid", "Tanh", "GELU", "GELUTanh", "QuickGELU", "HardSwish",
             "HardSigmoid", "HardMish")
    return tuple(getattr(a, n) for n in names if hasattr(a, n))


def _functional_act(fn: Callable[..., Any], args: tuple, kwargs: dict) -> nn.Module | None:
    """An activation module equivalent to a functional call (args beyond the input only)."""
    kw = dict(kwargs)
    kw.pop("inplace", None)
    if fn in (F.relu, torch.relu, torch.relu_, F.relu_):
        return nn.ReLU()
    if fn is F.relu6:
        return nn.ReLU6()
    if fn in (F.silu,):
        return nn.SiLU()
    if fn is F.hardswish:
        return nn.Hardswish()
    if fn is F.hardsigmoid:
        return nn.Hardsigmoid()
    if fn is F.mish:
        return nn.Mish()
    if fn in (torch.sigmoid, F.sigmoid):
        return nn.Sigmoid()
    if fn in (torch.tanh, F.tanh):
        return nn.Tanh()
    if fn is F.gelu:
        return nn.GELU(approximate=kw.get("approximate", "none"))
    if fn is F.leaky_relu:
        slope = args[0] if args else kw.get("negative_slope", 0.01)
        return nn.LeakyReLU(slope)
    if fn is F.elu:
        return nn.ELU(args[0] if args else kw.get("alpha", 1.0))
    if fn in (F.hardtanh, _aten.hardtanh.default, _aten.hardtanh_.default):
        lo = args[0] if len(args) > 0 else kw.get("min_val", -1.0)
        hi = args[1] if len(args) > 1 else kw.get("max_val", 1.0)
        return nn.Hardtanh(lo, hi)
    if fn is _aten.gelu.default:
        return nn.GELU(approximate=kw.get("approximate", "none"))
    if fn in _ATEN_ACTS:  # torch.export graphs call aten operators
        return _ATEN_ACTS[fn]()
    return None


_aten = torch.ops.aten
_ATEN_ACTS: dict[Any, Callable[[], nn.Module]] = {
    _aten.relu.default: nn.ReLU, _aten.relu_.default: nn.ReLU, _aten.silu.default: nn.SiLU,
    _aten.silu_.default: nn.SiLU, _aten.hardswish.default: nn.Hardswish, _aten.hardswish_.default: nn.Hardswish,
    _aten.sigmoid.default: nn.Sigmoid, _aten.sigmoid_.default: nn.Sigmoid, _aten.tanh.default: nn.Tanh,
    _aten.tanh_.default: nn.Tanh, _aten.hardsigmoid.default: nn.Hardsigmoid,
    _aten.hardsigmoid_.default: nn.Hardsigmoid, _aten.mish.default: nn.Mish,
}


_METHOD_ACTS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU, "relu_": nn.ReLU, "sigmoid": nn.Sigmoid, "sigmoid_": nn.Sigmoid,
    "tanh": nn.Tanh, "tanh_": nn.Tanh,
}


def _activation_of(node: fx.Node, src: fx.Node, modules: dict[str, nn.Module],
                   act_types: tuple[type, ...]) -> tuple[nn.Module, str] | None:
    """If ``node`` applies an elementwise activation to ``src`` alone, that activation as a module."""
    if not node.args or node.args[0] is not src:
        return None
    rest = list(node.args[1:]) + list(node.kwargs.values())
    if any(isinstance(a, fx.Node) for a in rest):
        return None
    if node.op == "call_module":
        mod = modules.get(str(node.target))
        if mod is not None and type(mod) in act_types:
            return copy.deepcopy(mod), str(node.target)
    elif node.op == "call_function":
        act = _functional_act(node.target, tuple(node.args[1:]), dict(node.kwargs))
        if act is not None:
            return act, getattr(node.target, "__name__", str(node.target))
    elif node.op == "call_method" and node.target in _METHOD_ACTS and len(node.args) == 1:
        return _METHOD_ACTS[node.target](), f".{node.target}()"
    return None


def _set_submodule(root: nn.Module, qualname: str, module: nn.Module) -> None:
    parent_name, _, leaf = qualname.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, leaf, module)


def _layer_plan(name: str, conv: nn.Conv2d, decision_convert: bool, s: int, d: int,
                reason: str | None) -> LayerPlan:
    return LayerPlan(
        name=name, type=type(conv).__name__, in_channels=conv.in_channels,
        out_channels=conv.out_channels, kernel_size=tuple(conv.kernel_size), stride=tuple(conv.stride),
        groups=conv.groups, converted=decision_convert, s=s, d=d, reason=reason,
    )


def _decide(config: GhostConfig, name: str, conv: nn.Module, is_stem: bool, inside_ghost: bool,
            supported: tuple[type, ...]) -> LayerPlan:
    if inside_ghost:
        return _layer_plan(name, conv, False, config.s, config.d, "already part of a Ghost module")
    if type(conv) not in supported:
        return _layer_plan(name, conv, False, config.s, config.d,
                           f"{type(conv).__name__} has its own forward; left alone rather than changed in meaning")
    decision = config.decide(name, conv.in_channels, conv.out_channels, tuple(conv.kernel_size),
                             conv.groups, is_stem)
    return _layer_plan(name, conv, decision.convert, decision.s, decision.d, decision.reason)


def _convs_inside_ghosts(model: nn.Module) -> set[str]:
    inside: set[str] = set()
    for name, mod in model.named_modules():
        if is_ghost_module(mod):
            inside.update(f"{name}.{sub}" if name else sub for sub, _ in mod.named_modules() if sub)
    return inside


def _stem_nodes(graph: fx.Graph, modules: dict[str, nn.Module]) -> set[str]:
    """Convolutions that read the input without another conv or linear layer in between."""
    after_layer: dict[fx.Node, bool] = {}
    stems: set[str] = set()
    for node in graph.nodes:
        upstream = any(after_layer.get(a, False) for a in node.all_input_nodes)
        mod = modules.get(str(node.target)) if node.op == "call_module" else None
        is_layer = isinstance(mod, (nn.Conv2d, nn.Linear)) or (mod is not None and is_ghost_module(mod))
        if isinstance(mod, nn.Conv2d) and not upstream:
            stems.add(str(node.target))
        after_layer[node] = upstream or is_layer
    return stems


def _rewrite_graph(gm: fx.GraphModule, config: GhostConfig, plan: ConversionPlan) -> None:
    modules = dict(gm.named_modules())
    supported = supported_conv_types()
    act_types = _ACT_MODULES + _timm_act_modules()
    inside = _convs_inside_ghosts(gm)
    stems = _stem_nodes(gm.graph, modules)
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[str(node.target)] = calls.get(str(node.target), 0) + 1
    # parameters the forward reads directly (e.g. timm's EdgeNeXt reads conv.weight.dtype)
    attr_reads = {str(node.target) for node in gm.graph.nodes if node.op == "get_attr"}

    for node in list(gm.graph.nodes):
        if node.op != "call_module":
            continue
        name = str(node.target)
        conv = modules.get(name)
        if not isinstance(conv, nn.Conv2d):
            continue
        layer = _decide(config, name, conv, name in stems, name in inside, supported)
        plan.layers.append(layer)
        if layer.converted and any(t.startswith(name + ".") for t in attr_reads):
            layer.converted = False  # a Ghost module has no .weight: the read would break
            layer.reason = "the forward reads this convolution's parameters directly; left alone to keep that working"
        if not layer.converted:
            continue
        norm = act = None
        tail = node
        if calls[name] > 1:
            layer.note = f"called {calls[name]} times: converted without folding its norm/activation"
        elif config.fuse:
            if len(tail.users) == 1:
                user = next(iter(tail.users))
                mod = modules.get(str(user.target)) if user.op == "call_module" else None
                if type(mod) is nn.BatchNorm2d and user.args and user.args[0] is tail and calls[str(user.target)] == 1:
                    norm, tail = mod, user
                    layer.fused.append(str(user.target))
            if len(tail.users) == 1:
                found = _activation_of(next(iter(tail.users)), tail, modules, act_types)
                if found is not None:
                    act = found[0]
                    layer.fused.append(found[1])
                    tail = next(iter(tail.users))
        layer.form = "paper" if (norm is not None or act is not None) else "linear"
        ghost = GhostModule.from_conv(conv, layer.s, layer.d, norm=norm, act=act)
        _set_submodule(gm, name, ghost)
        if tail is not node:
            tail.replace_all_uses_with(node)
            # erase from the tail back to the conv: act first, then norm
            chain = []
            cur = tail
            while cur is not node:
                chain.append(cur)
                cur = cur.args[0]
            for n in chain:
                gm.graph.erase_node(n)
    gm.graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()


def _swap_modules(model: nn.Module, config: GhostConfig, plan: ConversionPlan, why: str) -> None:
    """Fallback when fx cannot trace: swap convolutions in place.

    Inside an ``nn.Sequential`` the data flow is known, so adjacent conv, BN, act fold into a
    paper-form module; everywhere else a convolution becomes the linear form and its BN/act
    stay after the concat (the fusion downstream optimizers would have done is lost).
    """
    supported = supported_conv_types()
    act_types = _ACT_MODULES + _timm_act_modules()
    inside = _convs_inside_ghosts(model)
    first_conv = next((n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    unfused = 0
    handled: set[str] = set()
    for seq_name, seq in list(model.named_modules()):
        if type(seq) is not nn.Sequential or seq_name in inside:
            continue
        keys = list(seq._modules.keys())
        for i, key in enumerate(keys):
            conv = seq._modules[key]
            name = f"{seq_name}.{key}" if seq_name else key
            if not isinstance(conv, nn.Conv2d) or name in handled:
                continue
            handled.add(name)
            layer = _decide(config, name, conv, name == first_conv, False, supported)
            plan.layers.append(layer)
            if not layer.converted:
                continue
            norm = act = None
            j = i + 1
            if config.fuse and j < len(keys) and type(seq._modules[keys[j]]) is nn.BatchNorm2d:
                norm = seq._modules[keys[j]]
                layer.fused.append(f"{seq_name}.{keys[j]}")
                seq._modules[keys[j]] = nn.Identity()
                j += 1
            if config.fuse and j < len(keys) and type(seq._modules[keys[j]]) in act_types:
                act = copy.deepcopy(seq._modules[keys[j]])
                layer.fused.append(f"{seq_name}.{keys[j]}")
                seq._modules[keys[j]] = nn.Identity()
            layer.form = "paper" if (norm is not None or act is not None) else "linear"
            seq._modules[key] = GhostModule.from_conv(conv, layer.s, layer.d, norm=norm, act=act)
    for name, conv in list(model.named_modules()):
        if not isinstance(conv, nn.Conv2d) or name in handled or name in inside:
            continue
        if any(name.startswith(h + ".") for h in handled):
            continue
        layer = _decide(config, name, conv, name == first_conv, False, supported)
        plan.layers.append(layer)
        if layer.converted:
            layer.form = "linear"
            unfused += 1
            _set_submodule(model, name, GhostModule.from_conv(conv, layer.s, layer.d))
    plan.lost_optimizations.append(f"fx could not trace the model ({why}); modules were swapped in place")
    if unfused:
        plan.lost_optimizations.append(
            f"{unfused} convolution(s) outside nn.Sequential became linear Ghost modules: their "
            "BatchNorm/activation now follow the concat and will not fuse into the convolutions")
    order = {n: i for i, (n, _) in enumerate(model.named_modules(remove_duplicate=False))}
    plan.layers.sort(key=lambda layer: order.get(layer.name, len(order)))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else ""


def _record_hidden_convs(source: nn.Module, converted: nn.Module, plan: ConversionPlan) -> None:
    """Convolutions the rewrite never saw as nodes still get a reason.

    ``source`` is the traced module (it keeps every submodule); ``converted`` is the result
    (fx drops submodules the traced forward never calls).
    """
    seen = {layer.name for layer in plan.layers}
    new_ghosts = {layer.name for layer in plan.converted}
    ghost_parts = _convs_inside_ghosts(source)
    called = ({str(n.target) for n in converted.graph.nodes if n.op == "call_module"}
              if isinstance(converted, fx.GraphModule) else None)
    for name, mod in source.named_modules():
        if not isinstance(mod, nn.Conv2d) or name in seen or any(name.startswith(g + ".") for g in new_ghosts):
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
        plan.layers.append(_layer_plan(name, mod, False, plan.config["s"], plan.config["d"], reason))
    order = {n: i for i, (n, _) in enumerate(source.named_modules(remove_duplicate=False))}
    plan.layers.sort(key=lambda layer: order.get(layer.name, len(order)))


def _reset(ghost: GhostModule) -> None:
    for mod in ghost.modules():
        if mod is not ghost and hasattr(mod, "reset_parameters"):
            mod.reset_parameters()


def convert(
    model: nn.Module,
    s: int | None = None,
    d: int | None = None,
    config: GhostConfig | None = None,
    *,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
    init: str = "random",
    calibration_data: Any = None,
    input_size: Sequence[int] | None = None,
    calibration_samples: int | None = None,
    strict: bool = False,
    inplace: bool = False,
) -> nn.Module:
    """Return a copy of ``model`` whose convolutions are Ghost modules (the input is untouched).

    Args:
        model: any ``nn.Module`` (CNN); traced with torch.fx, or swapped in place if that fails.
        s, d: the ratio and cheap kernel (shortcut for ``GhostConfig(s=s, d=d)``).
        config: the full policy; ``s``/``d``/``include``/``exclude`` given here override it.
        init: ``"random"`` (fresh weights, the paper trains from scratch) or ``"transfer"``
            (start each Ghost module from the convolution it replaces; see ghostify.transfer).
        calibration_data: unlabeled inputs for ``init="transfer"`` (data-aware fit).
        input_size: (C, H, W) of one input; with ``init="transfer"`` and no calibration data,
            the fit runs on inputs distilled from the model's BatchNorm statistics.
        calibration_samples: use at most this many calibration inputs, or distil this many
            (default: all given; 256 distilled).
        strict: raise :class:`NothingToConvertError` when no convolution converts.
        inplace: rewrite ``model`` itself (module-swap mode only; fx always builds a new module).

    The returned module carries ``ghostify_plan`` (:class:`ghostify.plan.ConversionPlan`).
    """
    if init not in INIT_CHOICES:
        raise GhostifyError(f"init must be one of {', '.join(INIT_CHOICES)}, got {init!r}")
    config = copy.deepcopy(config) if config is not None else GhostConfig()
    if s is not None or d is not None:
        config.set_global(s if s is not None else config.s, d if d is not None else config.d)
    if include is not None:
        config.include = list(include) or ["*"]
    if exclude is not None:
        config.exclude = list(exclude)
    if not isinstance(model, nn.Module):
        raise GhostifyError(f"expected a torch.nn.Module, got {type(model).__name__}")
    if inplace and init == "transfer":  # transfer reads the original convolutions after the rewrite
        raise GhostifyError("init='transfer' needs the original model intact; use inplace=False")

    original = model
    work = model if inplace else copy.deepcopy(model)
    if is_exported_graph(work):  # a torch.export program: rebuild conv/BN modules first
        lift_exported(work)
    plan = ConversionPlan(config=config.to_dict(), mode="fx", init=init)
    gm: nn.Module
    try:
        gm = trace(work)
    except Exception:  # fx raises many kinds of errors on dynamic control flow
        try:  # again, keeping the libraries' leaf modules opaque
            gm = trace(work, library_leaves=True)
        except Exception as exc:
            gm = work
            plan.mode = "module-swap"
            _swap_modules(gm, config, plan, f"{type(exc).__name__}: {_first_line(exc)}")
        else:
            _rewrite_graph(gm, config, plan)
            plan.lost_optimizations.append(
                "fx could trace the model only with timm/torchvision leaf modules kept opaque; "
                "convolutions inside them were left alone")
    else:
        _rewrite_graph(gm, config, plan)
    _record_hidden_convs(work, gm, plan)

    if not plan.layers:
        raise GhostifyError("the model has no nn.Conv2d layer: nothing for ghostify to convert")
    if strict and not plan.converted:
        raise NothingToConvertError("no convolution was converted (every one was left alone: see the report)")

    ghosts = {name: mod for name, mod in gm.named_modules() if isinstance(mod, GhostModule)}
    if init == "random":
        for layer in plan.converted:
            _reset(ghosts[layer.name])
    else:
        from ghostify.transfer import transfer_init

        samples = {} if calibration_samples is None else {"max_samples": calibration_samples,
                                                          "synthetic_samples": calibration_samples}
        transfer_init(original, gm, plan, calibration_data=calibration_data, input_size=input_size, **samples)
    gm.train(original.training)
    setattr(gm, PLAN_ATTR, plan)
    return gm

