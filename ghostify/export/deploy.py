"""The deployment form: the same function as the training form, laid out for inference engines.

A Ghost module in its training form is ``cat([act(bn(conv(x))), act(bn(dw(.)))], 1)``. An engine
such as onnxruntime runs the two convolutions well, but pays for what surrounds them: the
Concat copies every output map once more, a BatchNorm after a Concat no longer folds, a Slice
(s not dividing n) or a Split breaks the blocked NCHWc layout, and an Add/ReLU after a Concat
no longer fuses into a convolution. ``deploy(model)`` rewrites the model so that none of this
remains where an equivalent layout exists:

* **BN folded** into every convolution it follows (Ghost modules and plain conv→BN pairs).
* **Blocked tensors instead of the concat.** The output of a Ghost module is kept as its two
  parts, intrinsic and ghost maps, each with the original channel indices it holds (so a
  ``channel_order`` permutation is just bookkeeping and disappears). Elementwise operations
  (ReLU, Add, ...) and depthwise convolutions run part by part; a residual Add whose other
  operand comes from a convolution gets that convolution split by output filters (same MACs)
  so both operands have the same parts, and the Add then fuses into the convolution that
  produced each part, as in the original network. A dense convolution that reads a blocked
  tensor sums one convolution per part (``W x = W_a x_a + W_b x_b``: same MACs, no copy;
  onnxruntime fuses the sum into the convolution).
* The intrinsic part of a residual Add (its maps also feed the cheap operation, so no
  convolution can take the Add) goes through a 1x1 depthwise identity convolution that fuses the
  Add and the ReLU: one pass over memory instead of two.
* s > 2: the cheap convolution's channel multiplier becomes s-1 true depthwise convolutions.
* ``m`` is padded with zero filters to a multiple of 16 where that costs at most m/4 maps
  (onnxruntime's NCHWc block); padding channels never reach an output.
* Anything else reads a materialised tensor (one Concat, plus an index_select only when the
  parts are not already in order), so the function never changes.

The pass works on the torch.fx graph (a ``ghostify.convert`` output already is one); when a
model cannot be traced, each Ghost module is replaced by its folded, concat form in place.
docs/deploy.md has the measurements behind each rule.
"""

from __future__ import annotations

import copy
import operator
from dataclasses import dataclass, fields

import torch
from torch import fx, nn

from ghostify.fx.facts import GraphFacts
from ghostify.fx.patterns import (
    BINARY_FUNCTIONS,
    BINARY_METHODS,
    CHANNELWISE_FUNCTIONS,
    CHANNELWISE_METHODS,
    CHANNELWISE_MODULES,
    NORM_MODULES,
    SPATIAL_REDUCTIONS,
    SUM_FUSABLE_ACTS,
)
from ghostify.fx.trace import trace
from ghostify.layers.ghost import FuseOptions, GhostModule
from ghostify.layers.surgery import CONV_TYPES, fold_bn, foldable, identity_conv, plain_conv, slice_conv
from ghostify.plan import PLAN_ATTR, attach
from ghostify.utils import set_submodule

__all__ = ["deploy", "DeployConfig", "DEPLOY_NOTES_ATTR", "INT8_DEPLOY"]

DEPLOY_NOTES_ATTR = "ghostify_deploy_notes"


@dataclass(frozen=True)
class DeployConfig:
    """The deployment form's rules, each measured on its own (``bench/latency.py --only ablation``).

    split_sum: a dense convolution reading a tensor kept as parts runs one convolution per part
        and sums them (``W x = W_a x_a + W_b x_b``: same MACs, no Concat to copy; onnxruntime fuses
        the sum into the convolution). Off: Concat, then one convolution.
    identity_add: the intrinsic part of a residual Add (its maps also feed the cheap operation,
        so no convolution can take the Add) goes through a 1x1 depthwise identity convolution
        that fuses the Add and the ReLU: one pass over memory instead of two.
    split_multiplier: s > 2: the cheap conv's channel multiplier becomes s-1 true depthwise convs.
    concat_before_other_acts: a primary conv followed by ReLU6/Hardswish/... reads concatenated
        parts (onnxruntime fuses only ReLU after a convolution that also adds).
    align: pad each Ghost module's m with zero filters up to a multiple of this (16:
        onnxruntime's NCHWc block on AVX-512, a multiple of AVX2's 8); 0 or 1 disables it.
    max_pad_fraction_inv: pad m only by up to m / this.
    """

    split_sum: bool = True
    identity_add: bool = True
    split_multiplier: bool = True
    concat_before_other_acts: bool = True
    align: int = 16
    max_pad_fraction_inv: int = 4

    @property
    def fuse_options(self) -> FuseOptions:
        return FuseOptions(align=self.align, max_pad_fraction_inv=self.max_pad_fraction_inv,
                           split_multiplier=self.split_multiplier)

    def replace(self, **changes: object) -> DeployConfig:
        known = {f.name for f in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise TypeError(f"unknown DeployConfig fields: {sorted(unknown)}")
        return DeployConfig(**{**{f.name: getattr(self, f.name) for f in fields(self)}, **changes})


# The int8 deployment form (bench/int8.py): with QDQ int8 a split sum's extra Add and the identity
# convolution are each one more quantized op with its own requantization, and no fusion removes them.
INT8_DEPLOY = DeployConfig(split_sum=False, identity_add=False)


@dataclass
class _Blocked:
    """A tensor kept as parts along the channel axis: parts[i] holds original channels idx[i]."""

    nodes: list[fx.Node]
    idx: list[torch.Tensor]

    @property
    def channels(self) -> int:
        """Channels of the original tensor (padding channels, index -1, not counted)."""
        return sum(int((i >= 0).sum()) for i in self.idx)

    def same_layout(self, other: _Blocked) -> bool:
        return len(self.idx) == len(other.idx) and all(torch.equal(a, b) for a, b in zip(self.idx, other.idx,
                                                                                           strict=True))


class _Builder:
    """Re-emits an fx graph, keeping Ghost outputs as parts as long as every consumer allows it."""

    def __init__(self, gm: fx.GraphModule, config: DeployConfig, facts: GraphFacts,
                 want: dict[str, list[torch.Tensor]] | None = None) -> None:
        self.gm = gm
        self.config = config
        # convolutions (by node name) to emit split by output filters from the start: a later
        # Add/Mul wanted their output in a Ghost module's parts (found by the previous pass)
        self.want = dict(want or {})
        self.new_wants: dict[str, list[torch.Tensor]] = {}
        self.modules = dict(facts.modules)
        self.calls = facts.calls
        self.graph = fx.Graph()
        self.env: dict[fx.Node, fx.Node | _Blocked] = {}
        self.notes: list[str] = []
        self.counter = 0
        self.origin: dict[fx.Node, fx.Node] = {}

    # -- helpers -------------------------------------------------------------------------------
    def _place(self, qualname: str, module: nn.Module) -> str:
        """Register ``module`` under a fresh name derived from ``qualname``; return the name."""
        base = qualname.replace(".", "_") + "__deploy"
        name = f"{base}{self.counter}"
        self.counter += 1
        self.gm.add_submodule(name, module)
        self.modules[name] = module
        return name

    def _call(self, module: nn.Module, arg: fx.Node, qualname: str) -> fx.Node:
        if self.modules.get(qualname) is module:  # unchanged: keep its own name
            return self.graph.call_module(qualname, (arg,))
        return self.graph.call_module(self._place(qualname, module), (arg,))

    def plain(self, value: fx.Node | _Blocked) -> fx.Node:
        """A tensor in the original channel order (one Concat; index_select only if needed)."""
        if not isinstance(value, _Blocked):
            return value
        cat = value.nodes[0] if len(value.nodes) == 1 else self.graph.call_function(torch.cat,
                                                                                    (list(value.nodes), 1))
        order = torch.cat(value.idx)
        if torch.equal(order, torch.arange(len(order))):
            return cat
        real = order >= 0  # padding channels (-1) are dropped here
        inverse = torch.empty(int(real.sum()), dtype=torch.long)
        inverse[order[real]] = torch.nonzero(real).flatten()
        name = f"ghostify_order{self.counter}"
        self.counter += 1
        self.gm.register_buffer(name, inverse)
        return self.graph.call_method("index_select", (cat, 1, self.graph.get_attr(name)))

    def _map_plain(self, args: object) -> object:
        return fx.node.map_aggregate(args, lambda a: self.plain(self.env[a]) if isinstance(a, fx.Node) else a)

    def copy_node(self, node: fx.Node) -> fx.Node:
        args = self._map_plain(node.args)
        kwargs = self._map_plain(node.kwargs)
        new = self.graph.create_node(node.op, node.target, args, kwargs, node.name)
        new.meta = copy.copy(node.meta)
        return new

    # -- rules ---------------------------------------------------------------------------------
    def conv(self, conv: nn.Module, value: fx.Node | _Blocked, qualname: str) -> fx.Node | _Blocked:
        """A (BN-folded) convolution on a plain or blocked input."""
        if not isinstance(value, _Blocked):
            return self._call(conv, value, qualname)
        depthwise = conv.groups == conv.in_channels == conv.out_channels and conv.groups > 1
        if depthwise:  # channel c reads only channel c: run part by part
            nodes = [self._call(slice_conv(conv, idx, idx, depthwise=True), part, qualname)
                     for part, idx in zip(value.nodes, value.idx, strict=True)]
            return _Blocked(nodes, [i.clone() for i in value.idx])
        if conv.groups != 1 or not _plain(conv) or not self.config.split_sum:
            return self._call(conv, self.plain(value), qualname)
        # W x = sum over parts of W[:, idx] x_part (same MACs as one conv, and no Concat to copy).
        out = None
        for k, (part, idx) in enumerate(zip(value.nodes, value.idx, strict=True)):
            piece = slice_conv(conv, None, idx, bias=k == 0)
            y = self._call(piece, part, qualname)
            out = y if out is None else self.graph.call_function(operator.add, (y, out))
        return out

    def conv_split_out(self, conv: nn.Module, arg: fx.Node | _Blocked, like: _Blocked,
                       qualname: str) -> _Blocked:
        """The convolution's output filters split into the parts of ``like`` (same MACs)."""
        if conv.groups != 1 or not _plain(conv):
            arg = self.plain(arg)
            nodes = [self._call(slice_conv(conv, idx, None, groups=conv.groups), arg, qualname) for idx in like.idx]
        else:  # each part of the output may itself read a blocked input (split-sum)
            nodes = [self.plain(self.conv(slice_conv(conv, idx, None), arg, qualname)) for idx in like.idx]
        return _Blocked(nodes, [i.clone() for i in like.idx])

    def ghost(self, ghost: GhostModule, value: fx.Node | _Blocked, qualname: str) -> fx.Node | _Blocked:
        """The module's own deployment form (:meth:`GhostModule.fuse`), its parts kept apart."""
        fused = ghost.fuse(self.config.fuse_options)
        if not fused.blocked:
            if ghost.trim:
                self.notes.append(f"{qualname}: s does not divide n; kept the concat and slice")
            return self._call(fused, self.plain(value), qualname)
        conv, norm, act = fused.primary
        if isinstance(value, _Blocked) and not isinstance(act, SUM_FUSABLE_ACTS) \
                and self.config.concat_before_other_acts:
            # onnxruntime fuses only ReLU after a convolution that also adds (the split form
            # W_a a + W_b b); a ReLU6/Hardswish there would leave NCHWc (reorders + Clip): concat
            # the (block-aligned) parts instead, which stays in NCHWc.
            value = self.plain(value)
        y = self.conv(conv, value, qualname + ".primary")
        for mod, suffix in ((norm, ".primary_norm"), (act, ".primary_act")):
            if not isinstance(mod, nn.Identity):
                y = self._call(mod, self.plain(y), qualname + suffix)
        y = self.plain(y)
        nodes = [y]
        for j, cheap in enumerate(fused.cheap):
            g = y
            for mod, suffix in zip(cheap, (f".cheap{j}", ".cheap_norm", ".cheap_act"), strict=False):
                if not isinstance(mod, nn.Identity):
                    g = self._call(mod, g, qualname + suffix)
            nodes.append(g)
        return _Blocked(nodes, [i.clone() for i in fused.index])

    def binary(self, node: fx.Node, fn: object) -> _Blocked | None:
        """Add/Mul with at least one blocked operand, run part by part when layouts can agree."""
        if len(node.args) != 2 or node.kwargs:
            return None
        a, b = node.args
        va = self.env[a] if isinstance(a, fx.Node) else a
        vb = self.env[b] if isinstance(b, fx.Node) else b
        if not isinstance(va, _Blocked) and not isinstance(vb, _Blocked):
            return None
        if not isinstance(va, _Blocked):  # keep the blocked one first (both ops commute)
            a, b, va, vb = b, a, vb, va
        assert isinstance(va, _Blocked)
        if isinstance(vb, (int, float)):
            return _Blocked([self.graph.call_function(fn, (x, vb)) for x in va.nodes], [i.clone() for i in va.idx])
        if not isinstance(vb, _Blocked):
            vb = self._resplit(b, va) if isinstance(b, fx.Node) else None
            if vb is None and isinstance(b, fx.Node):
                self._request(b, va)
        if vb is None or not va.same_layout(vb):
            return None
        nodes = []
        for x, y, idx in zip(va.nodes, vb.nodes, va.idx, strict=True):
            if fn is operator.add and self.config.identity_add and not (self._fusable(x) or self._fusable(y)):
                # neither operand comes straight from a convolution (the intrinsic maps also feed
                # the cheap operation): a 1x1 depthwise identity convolution gives the Add (and
                # the ReLU after it) a convolution to fuse into: one pass over memory, not two.
                x = self._call(identity_conv(len(idx), _dims_of(self.modules, x), like=self.gm), x, "identity")
            nodes.append(self.graph.call_function(fn, (x, y)))
        return _Blocked(nodes, [i.clone() for i in va.idx])

    def _fusable(self, node: fx.Node) -> bool:
        """Produced by a convolution and read by nothing else yet: onnxruntime fuses an Add into it."""
        if node.op != "call_module" or len(node.users) != 0:
            return False
        return _is_conv(self.modules.get(str(node.target)))

    def _resplit(self, old: fx.Node, like: _Blocked) -> _Blocked | None:
        """Re-emit the plain convolution behind ``old`` (through channel-wise ops) split like ``like``.

        Only when nothing else reads those nodes; splitting a convolution by output filters costs
        no MACs, and afterwards both operands of the Add/Mul have the same parts.
        """
        emitted = self.env.get(old)
        if len(old.users) != 1 or not isinstance(emitted, fx.Node) or len(emitted.users) != 0:
            return None
        if len(emitted.args) < 1 or not isinstance(emitted.args[0], fx.Node):
            return None
        if emitted.op == "call_module":
            mod = self.modules.get(str(emitted.target))
            if _plain(mod) and mod.out_channels == like.channels and len(emitted.args) == 1 \
                    and not emitted.kwargs and mod.groups == 1:
                source = emitted.args[0]
                self.graph.erase_node(emitted)
                return self.conv_split_out(mod, source, like, str(emitted.target).split("__deploy")[0])
        if not self._channelwise(emitted):
            return None
        inner_old = self.origin.get(emitted.args[0])
        if inner_old is None:
            return None
        inner = self._resplit(inner_old, like)
        if inner is None:
            return None
        rest = emitted.args[1:]
        nodes = [self.graph.create_node(emitted.op, emitted.target, (p, *rest), dict(emitted.kwargs))
                 for p in inner.nodes]
        self.graph.erase_node(emitted)
        return _Blocked(nodes, inner.idx)

    def _request(self, old: fx.Node, like: _Blocked) -> None:
        """Walk back through channel-wise ops to the convolution that made ``old``; ask the next
        pass to emit it split like ``like`` (its other readers then read the parts too)."""
        node = old
        while True:
            if node.op == "call_module" and _is_conv(self.modules.get(str(node.target))):
                conv = self.modules[str(node.target)]
                if conv.out_channels == like.channels and conv.groups == 1 and node.name not in self.want:
                    self.new_wants[node.name] = [i.clone() for i in like.idx]
                return
            through_bn = node.op == "call_module" and type(self.modules.get(str(node.target))) in NORM_MODULES
            if not (through_bn or self._channelwise(node)) or not node.args or not isinstance(node.args[0], fx.Node):
                return
            node = node.args[0]

    def _channelwise(self, node: fx.Node) -> bool:
        """Does ``node`` act on each channel alone (so it can run part by part)?"""
        if node.op == "call_module":
            return isinstance(self.modules.get(str(node.target)), CHANNELWISE_MODULES)
        if node.op == "call_function":
            return node.target in CHANNELWISE_FUNCTIONS
        if node.op == "call_method":
            if node.target in CHANNELWISE_METHODS:
                return len(node.args) == 1 and not node.kwargs
            if node.target in SPATIAL_REDUCTIONS:  # channel-wise when only spatial axes are reduced
                dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
                dims = (dims,) if isinstance(dims, int) else dims
                return isinstance(dims, (tuple, list)) and bool(dims) and all(d >= 2 or d in (-1, -2) for d in dims)
        return False

    def _conv_or_split(self, node: fx.Node, conv: nn.Module, value: fx.Node | _Blocked) -> fx.Node | _Blocked:
        if node.name in self.want and conv.out_channels == sum(int((i >= 0).sum()) for i in self.want[node.name]):
            like = _Blocked([], self.want[node.name])
            return self.conv_split_out(conv, value, like, str(node.target))
        return self.conv(conv, value, str(node.target))

    # -- driver --------------------------------------------------------------------------------
    def run(self) -> fx.Graph:
        nodes = list(self.gm.graph.nodes)
        skip: set[fx.Node] = set()
        for node in nodes:
            if node in skip:
                continue
            value = self.visit(node, skip)
            self.env[node] = value
            if isinstance(value, fx.Node):
                self.origin[value] = node
        return self.graph

    def visit(self, node: fx.Node, skip: set[fx.Node]) -> fx.Node | _Blocked:
        if node.op == "output":
            return self.copy_node(node)
        if node.op == "call_module":
            mod = self.modules[str(node.target)]
            arg = node.args[0] if len(node.args) == 1 and not node.kwargs else None
            value = self.env.get(arg) if isinstance(arg, fx.Node) else None
            once = self.calls[str(node.target)] == 1
            if isinstance(mod, GhostModule) and value is not None and once:
                return self.ghost(mod, value, str(node.target))
            if _is_conv(mod) and value is not None and once:
                # fold a BatchNorm that only reads this convolution
                users = list(node.users)
                if len(users) == 1 and users[0].op == "call_module" and users[0].args == (node,):
                    bn = self.modules.get(str(users[0].target))
                    if bn is not None and foldable(mod, bn) and self.calls[str(users[0].target)] == 1:
                        skip.add(users[0])
                        out = self._conv_or_split(node, fold_bn(mod, bn), value)
                        self.env[users[0]] = out
                        return out
                return self._conv_or_split(node, mod, value)
        if node.op in ("call_module", "call_function", "call_method") and node.args \
                and isinstance(node.args[0], fx.Node) and isinstance(self.env.get(node.args[0]), _Blocked) \
                and self._channelwise(node) and all(not isinstance(a, fx.Node) for a in node.args[1:]) \
                and all(not isinstance(v, fx.Node) for v in node.kwargs.values()):
            value = self.env[node.args[0]]
            return _Blocked([self.graph.create_node(node.op, node.target, (p, *node.args[1:]), dict(node.kwargs))
                             for p in value.nodes], [i.clone() for i in value.idx])
        fn = BINARY_FUNCTIONS.get(node.target) if node.op == "call_function" else BINARY_METHODS.get(str(node.target)) \
            if node.op == "call_method" else None
        if fn is not None:
            out = self.binary(node, fn)
            if out is not None:
                return out
        return self.copy_node(node)


_CONVS = tuple(CONV_TYPES.values())


def _is_conv(module: object) -> bool:
    return isinstance(module, _CONVS)


def _plain(module: object) -> bool:
    """Its forward is the convolution of its weight (:func:`plain_conv`), so it may be sliced."""
    return plain_conv(module)


def _dims_of(modules: dict[str, nn.Module], node: fx.Node) -> int:
    """Spatial dims of the tensor ``node`` produces, from the convolution that made it (else 2).

    Walks back through first arguments: the node is often a ReLU or a norm after that convolution.
    """
    for _ in range(64):
        mod = modules.get(str(node.target)) if node.op == "call_module" else None
        if _is_conv(mod):
            return len(mod.kernel_size)
        if not node.args or not isinstance(node.args[0], fx.Node):
            break
        node = node.args[0]
    return 2


def _swap_in_place(model: nn.Module, config: DeployConfig) -> nn.Module:
    for name, mod in list(model.named_modules()):
        if isinstance(mod, GhostModule):
            set_submodule(model, name, mod.fuse(config.fuse_options))
    return model


def deploy(model: nn.Module, config: DeployConfig | None = None, *, align: int | None = None) -> nn.Module:
    """The deployment form of ``model``: same outputs in eval mode, fewer ops around the convolutions.

    The graph pass walks the model; every Ghost module contributes its own deployment form
    (:meth:`GhostModule.fuse`), and the rules of :class:`DeployConfig` decide how the parts are
    kept apart across the graph. ``align`` is a shortcut for ``config.align``.

    Returns a new module in eval mode (the input is untouched) carrying ``ghostify_deploy_notes``
    (what could not be kept concat-free, and why). Works for original and converted models
    alike, so both go through the same export path. Inference only: the folded BatchNorms
    no longer track statistics.
    """
    config = config or DeployConfig()
    if align is not None:
        config = config.replace(align=align)
    work = copy.deepcopy(model).eval()
    notes: list[str] = []
    try:
        gm = work if isinstance(work, fx.GraphModule) else trace(work)
    except Exception as exc:  # untraceable: Ghost modules folded in place, concat kept
        out = _swap_in_place(work, config)
        notes.append(f"fx could not trace the model ({type(exc).__name__}); Ghost modules keep their concat")
        attach(out, DEPLOY_NOTES_ATTR, notes)
        return out.eval()
    want: dict[str, list[torch.Tensor]] = {}
    for _ in range(4):  # each pass may find convolutions a later Add wants split; rarely more than 2
        builder = _Builder(gm, config, GraphFacts.of(gm), want)
        graph = builder.run()
        if not builder.new_wants:
            break
        want.update(builder.new_wants)
    graph.lint()
    gm.graph = graph
    gm.recompile()
    gm.delete_all_unused_submodules()
    notes += builder.notes
    attach(gm, DEPLOY_NOTES_ATTR, notes)
    if hasattr(model, PLAN_ATTR):
        attach(gm, PLAN_ATTR, getattr(model, PLAN_ATTR))
    return gm.eval()
