"""The op tables and the chain pattern, as data: what the rewrite folds and what the deploy pass runs part by part.

* **Activations** a Ghost module can carry inside it (module, functional, method and aten forms),
  each mapped to a module factory.
* **Channel-wise ops**: act on every channel alike, so a tensor kept as parts can go through them
  part by part (the deployment form's concat-free layout).
* **Binary ops** that combine two tensors element by element (residual Add, SE's Mul).
* **The chain** ``conv -> norm? -> act?``: :func:`match_chain` walks it over any sequence of
  elements (fx nodes, or the modules of an ``nn.Sequential``), so both the graph rewrite and the
  module-swap fallback fold the same pattern.
"""

from __future__ import annotations

import copy
import operator
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import torch
import torch.nn.functional as F
from torch import fx, nn

__all__ = ["ACTIVATION_MODULES", "NORM_MODULES", "CHANNELWISE_MODULES", "CHANNELWISE_FUNCTIONS",
           "CHANNELWISE_METHODS", "SPATIAL_REDUCTIONS", "SUM_FUSABLE_ACTS", "BINARY_FUNCTIONS", "BINARY_METHODS",
           "activation_types", "functional_activation", "node_activation", "Chain", "match_chain", "node_chain"]

_aten = torch.ops.aten

# -- activations --------------------------------------------------------------------------------
ACTIVATION_MODULES: tuple[type, ...] = (
    nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish, nn.GELU, nn.LeakyReLU, nn.ELU, nn.Mish,
    nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.CELU, nn.SELU, nn.Softplus,
)
_TIMM_ACTIVATIONS = ("Swish", "Mish", "Sigmoid", "Tanh", "GELU", "GELUTanh", "QuickGELU", "HardSwish",
                     "HardSigmoid", "HardMish")

# functional form -> module factory taking the call's extra (args, kwargs)
_FUNCTIONAL: dict[Any, Callable[[tuple, dict], nn.Module]] = {
    **dict.fromkeys((F.relu, torch.relu, torch.relu_, F.relu_), lambda a, k: nn.ReLU()),
    F.relu6: lambda a, k: nn.ReLU6(),
    F.silu: lambda a, k: nn.SiLU(),
    F.hardswish: lambda a, k: nn.Hardswish(),
    F.hardsigmoid: lambda a, k: nn.Hardsigmoid(),
    F.mish: lambda a, k: nn.Mish(),
    **dict.fromkeys((torch.sigmoid, F.sigmoid), lambda a, k: nn.Sigmoid()),
    **dict.fromkeys((torch.tanh, F.tanh), lambda a, k: nn.Tanh()),
    **dict.fromkeys((F.gelu, _aten.gelu.default), lambda a, k: nn.GELU(approximate=k.get("approximate", "none"))),
    F.leaky_relu: lambda a, k: nn.LeakyReLU(a[0] if a else k.get("negative_slope", 0.01)),
    F.elu: lambda a, k: nn.ELU(a[0] if a else k.get("alpha", 1.0)),
    **dict.fromkeys((F.hardtanh, _aten.hardtanh.default, _aten.hardtanh_.default),
                    lambda a, k: nn.Hardtanh(a[0] if len(a) > 0 else k.get("min_val", -1.0),
                                             a[1] if len(a) > 1 else k.get("max_val", 1.0))),
    # torch.export graphs call aten operators
    **dict.fromkeys((_aten.relu.default, _aten.relu_.default), lambda a, k: nn.ReLU()),
    **dict.fromkeys((_aten.silu.default, _aten.silu_.default), lambda a, k: nn.SiLU()),
    **dict.fromkeys((_aten.hardswish.default, _aten.hardswish_.default), lambda a, k: nn.Hardswish()),
    **dict.fromkeys((_aten.sigmoid.default, _aten.sigmoid_.default), lambda a, k: nn.Sigmoid()),
    **dict.fromkeys((_aten.tanh.default, _aten.tanh_.default), lambda a, k: nn.Tanh()),
    **dict.fromkeys((_aten.hardsigmoid.default, _aten.hardsigmoid_.default), lambda a, k: nn.Hardsigmoid()),
    _aten.mish.default: lambda a, k: nn.Mish(),
}
_METHOD_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU, "relu_": nn.ReLU, "sigmoid": nn.Sigmoid, "sigmoid_": nn.Sigmoid, "tanh": nn.Tanh,
    "tanh_": nn.Tanh,
}

# norms a chain folds: exact BatchNorm classes (a subclass may do anything in its forward)
NORM_MODULES: tuple[type, ...] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)

# -- channel-wise and binary ops (the deploy pass) ----------------------------------------------
CHANNELWISE_MODULES: tuple[type, ...] = (
    nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.GELU, nn.Sigmoid, nn.Tanh, nn.LeakyReLU,
    nn.ELU, nn.Mish, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.MaxPool1d, nn.MaxPool2d,
    nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
CHANNELWISE_FUNCTIONS = frozenset({
    torch.relu, F.relu, F.relu6, F.hardswish, F.hardsigmoid, F.silu, F.gelu, torch.sigmoid, torch.tanh, F.leaky_relu,
    F.dropout, F.hardtanh, F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool1d,
    F.adaptive_max_pool2d, F.adaptive_max_pool3d})
CHANNELWISE_METHODS = frozenset({"relu", "relu_", "sigmoid", "tanh", "contiguous", "clone"})
SPATIAL_REDUCTIONS = frozenset({"mean", "amax", "sum"})  # channel-wise when they reduce spatial axes only
SUM_FUSABLE_ACTS: tuple[type, ...] = (nn.ReLU, nn.Identity)  # onnxruntime fuses these after Conv + Add
BINARY_FUNCTIONS = {operator.add: operator.add, operator.iadd: operator.add, torch.add: operator.add,
                    operator.mul: operator.mul, operator.imul: operator.mul, torch.mul: operator.mul}
BINARY_METHODS = {"add": operator.add, "add_": operator.add, "mul": operator.mul, "mul_": operator.mul}


def activation_types() -> tuple[type, ...]:
    """Activation module classes a Ghost module may carry: torch's, and timm's when timm is in use."""
    if "timm" not in sys.modules:  # only a model built with timm can hold timm's activations
        return ACTIVATION_MODULES
    from timm.layers import activations as a

    return ACTIVATION_MODULES + tuple(getattr(a, n) for n in _TIMM_ACTIVATIONS if hasattr(a, n))


def functional_activation(fn: Any, args: tuple, kwargs: dict) -> nn.Module | None:
    """The activation module equivalent to a functional call (``args``: those after the input)."""
    factory = _FUNCTIONAL.get(fn)
    if factory is None:
        return None
    kw = {k: v for k, v in kwargs.items() if k != "inplace"}
    return factory(tuple(args), kw)


def node_activation(node: fx.Node, src: fx.Node, modules: dict[str, nn.Module],
                    act_types: tuple[type, ...]) -> tuple[nn.Module, str] | None:
    """If ``node`` applies an elementwise activation to ``src`` alone: (that activation as a module, its name)."""
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
        act = functional_activation(node.target, tuple(node.args[1:]), dict(node.kwargs))
        if act is not None:
            return act, getattr(node.target, "__name__", str(node.target))
    elif node.op == "call_method" and node.target in _METHOD_ACTIVATIONS and len(node.args) == 1:
        return _METHOD_ACTIVATIONS[node.target](), f".{node.target}()"
    return None


# -- the chain ----------------------------------------------------------------------------------
T = TypeVar("T")


@dataclass
class Chain(Generic[T]):
    """What followed a convolution: its norm and activation (when folded), their names, the last element."""

    tail: T
    norm: nn.Module | None = None
    act: nn.Module | None = None
    fused: list[str] = field(default_factory=list)


def match_chain(conv: T, step: Callable[[T], T | None], norm_at: Callable[[T, T], tuple[nn.Module, str] | None],
                act_at: Callable[[T, T], tuple[nn.Module, str] | None]) -> Chain[T]:
    """Match ``conv -> norm? -> act?``: ``step(e)`` is the only element reading ``e`` (or None),
    ``norm_at(e, prev)`` / ``act_at(e, prev)`` the norm / activation ``e`` applies to ``prev``."""
    chain: Chain[T] = Chain(conv)
    nxt = step(conv)
    found = norm_at(nxt, conv) if nxt is not None else None
    if found is not None:
        chain.norm, name = found
        chain.fused.append(name)
        chain.tail, nxt = nxt, step(nxt)
    found = act_at(nxt, chain.tail) if nxt is not None else None
    if found is not None:
        chain.act, name = found
        chain.fused.append(name)
        chain.tail = nxt
    return chain


def node_chain(node: fx.Node, modules: dict[str, nn.Module], calls: dict[str, int],
               act_types: tuple[type, ...]) -> Chain[fx.Node]:
    """:func:`match_chain` on an fx graph: a norm or activation folds only if it reads the
    convolution's output alone, nothing else reads that output, and the norm runs once."""
    def step(n: fx.Node) -> fx.Node | None:
        return next(iter(n.users)) if len(n.users) == 1 else None

    def norm_at(user: fx.Node, prev: fx.Node) -> tuple[nn.Module, str] | None:
        mod = modules.get(str(user.target)) if user.op == "call_module" else None
        if type(mod) in NORM_MODULES and user.args and user.args[0] is prev and calls[str(user.target)] == 1:
            return mod, str(user.target)
        return None

    return match_chain(node, step, norm_at, lambda user, prev: node_activation(user, prev, modules, act_types))
