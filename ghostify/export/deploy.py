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
from dataclasses import dataclass

import torch
from torch import fx, nn
from torch.nn import functional as F

from ghostify.fx.trace import trace
from ghostify.layers.ghost import GhostModule

__all__ = ["deploy", "fold_bn", "DeployedGhost", "DEPLOY_NOTES_ATTR"]

DEPLOY_NOTES_ATTR = "ghostify_deploy_notes"
# Switches for the measured rules (docs/deploy.md has the ablation); all on by default.
SPLIT_SUM = True  # dense conv on parts: W_a a + W_b b (off: Concat, then one conv)
IDENTITY_ADD = True  # 1x1 depthwise identity conv so the intrinsic part's Add+ReLU fuse
SPLIT_MULTIPLIER = True  # s > 2: the cheap conv's channel multiplier as s-1 true depthwise convs
CONCAT_BEFORE_OTHER_ACTS = True  # a primary conv followed by ReLU6/Hardswish/...: read concatenated parts
MAX_PAD_FRACTION_INV = 4  # pad m only by up to m/4

# Elementwise ops that act on every channel alike (so they run part by part unchanged).
_CHANNELWISE_MODULES: tuple[type, ...] = (
    nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.GELU, nn.Sigmoid, nn.Tanh, nn.LeakyReLU,
    nn.ELU, nn.Mish, nn.Identity, nn.Dropout, nn.Dropout2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d)
_UNARY_FUNCTIONS = {torch.relu, F.relu, F.relu6, F.hardswish, F.hardsigmoid, F.silu, F.gelu, torch.sigmoid,
                    torch.tanh, F.leaky_relu, F.dropout, F.hardtanh, F.max_pool2d, F.avg_pool2d,
                    F.adaptive_avg_pool2d, F.adaptive_max_pool2d}
_SUM_FUSABLE_ACTS: tuple[type, ...] = (nn.ReLU, nn.Identity)
_UNARY_METHODS = {"relu", "relu_", "sigmoid", "tanh", "contiguous", "clone"}
_BINARY = {operator.add: operator.add, operator.iadd: operator.add, torch.add: operator.add,
           operator.mul: operator.mul, operator.imul: operator.mul, torch.mul: operator.mul}
_BINARY_METHODS = {"add": operator.add, "add_": operator.add, "mul": operator.mul, "mul_": operator.mul}


def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A copy of ``conv`` computing ``bn(conv(x))`` in eval mode (weights scaled, bias added)."""
    fused = copy.deepcopy(conv)
    with torch.no_grad():
        w = conv.weight
        std = torch.sqrt(bn.running_var + bn.eps)
        scale = (bn.weight if bn.affine else torch.ones_like(std)) / std
        shift = (bn.bias if bn.affine else torch.zeros_like(std)) - bn.running_mean * scale
        b = conv.bias if conv.bias is not None else torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
        fused.weight = nn.Parameter((w * scale.reshape(-1, *([1] * (w.dim() - 1)))).to(w.dtype))
        fused.bias = nn.Parameter((b * scale + shift).to(w.dtype))
    return fused


def _foldable(norm: nn.Module) -> bool:
    return type(norm) is nn.BatchNorm2d and norm.running_mean is not None and norm.running_var is not None


def _fold_seq(conv: nn.Conv2d, norm: nn.Module) -> tuple[nn.Conv2d, nn.Module]:
    """(conv with norm folded, Identity) when the norm folds, else (conv, norm) unchanged."""
    if _foldable(norm):
        return fold_bn(conv, norm), nn.Identity()
    return conv, norm


class DeployedGhost(nn.Module):
    """A Ghost module with its norms folded: act(conv) -> cat with act(cheap) -> optional slice.

    The form used where the graph pass cannot keep the parts apart (untraceable models, s not
    dividing n); it has no BatchNorm left but keeps the concat.
    """

    def __init__(self, ghost: GhostModule) -> None:
        super().__init__()
        conv, norm, act = ghost.primary_conv
        self.primary, self.primary_norm = _fold_seq(conv, norm)
        self.primary_act = act
        self.cheap = None
        if ghost.cheap_operation is not None:
            cconv, cnorm, cact = ghost.cheap_operation
            self.cheap = nn.Sequential(*_fold_seq(cconv, cnorm), cact)
        self.out_channels = ghost.out_channels
        self.trim = ghost.trim
        self.register_buffer("channel_order", None if ghost.channel_order is None else ghost.channel_order.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.primary_act(self.primary_norm(self.primary(x)))
        if self.cheap is not None:
            y = torch.cat([y, self.cheap(y)], dim=1)
        if self.trim:
            y = y[:, : self.out_channels]
        if self.channel_order is not None:
            y = y.index_select(1, self.channel_order)
        return y


class _Parts(nn.Module):
    """A container for the modules one original module became (keeps its qualified name)."""


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

    def __init__(self, gm: fx.GraphModule, want: dict[str, list[torch.Tensor]] | None = None,
                 align: int = 16) -> None:
        self.gm = gm
        self.align = align
        self.padded = 0
        # convolutions (by node name) to emit split by output filters from the start: a later
        # Add/Mul wanted their output in a Ghost module's parts (found by the previous pass)
        self.want = dict(want or {})
        self.new_wants: dict[str, list[torch.Tensor]] = {}
        self.modules = dict(gm.named_modules())
        self.graph = fx.Graph()
        self.env: dict[fx.Node, fx.Node | _Blocked] = {}
        self.notes: list[str] = []
        self.counter = 0
        self.calls: dict[str, int] = {}
        for n in gm.graph.nodes:
            if n.op == "call_module":
                self.calls[str(n.target)] = self.calls.get(str(n.target), 0) + 1
        self.materialized = 0
        self.origin: dict[fx.Node, fx.Node] = {}
        self.split_convs = 0

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
        self.materialized += 1
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
    def conv(self, conv: nn.Conv2d, value: fx.Node | _Blocked, qualname: str) -> fx.Node | _Blocked:
        """A (BN-folded) convolution on a plain or blocked input."""
        if not isinstance(value, _Blocked):
            return self._call(conv, value, qualname)
        depthwise = conv.groups == conv.in_channels == conv.out_channels and conv.groups > 1
        if depthwise:  # channel c reads only channel c: run part by part
            nodes = [self._call(_slice_conv(conv, idx, idx, depthwise=True), part, qualname)
                     for part, idx in zip(value.nodes, value.idx, strict=True)]
            return _Blocked(nodes, [i.clone() for i in value.idx])
        if conv.groups != 1 or type(conv) is not nn.Conv2d or not SPLIT_SUM:
            return self._call(conv, self.plain(value), qualname)
        # W x = sum over parts of W[:, idx] x_part (same MACs as one conv, and no Concat to copy).
        out = None
        for k, (part, idx) in enumerate(zip(value.nodes, value.idx, strict=True)):
            piece = _slice_conv(conv, None, idx, bias=k == 0)
            y = self._call(piece, part, qualname)
            out = y if out is None else self.graph.call_function(operator.add, (y, out))
        self.split_convs += 1
        return out

    def conv_split_out(self, conv: nn.Conv2d, arg: fx.Node | _Blocked, like: _Blocked,
                       qualname: str) -> _Blocked:
        """The convolution's output filters split into the parts of ``like`` (same MACs)."""
        if conv.groups != 1 or type(conv) is not nn.Conv2d:
            arg = self.plain(arg)
            nodes = [self._call(_slice_conv(conv, idx, None, groups=conv.groups), arg, qualname) for idx in like.idx]
        else:  # each part of the output may itself read a blocked input (split-sum)
            nodes = [self.plain(self.conv(_slice_conv(conv, idx, None), arg, qualname)) for idx in like.idx]
        return _Blocked(nodes, [i.clone() for i in like.idx])

    def ghost(self, ghost: GhostModule, value: fx.Node | _Blocked, qualname: str) -> fx.Node | _Blocked:
        if ghost.trim or ghost.cheap_operation is None:
            if ghost.trim:
                self.notes.append(f"{qualname}: s does not divide n; kept the concat and slice")
            return self._call(DeployedGhost(ghost), self.plain(value), qualname)
        conv, norm, act = ghost.primary_conv
        conv, norm = _fold_seq(conv, norm)
        cconv, cnorm, cact = ghost.cheap_operation
        cconv, cnorm = _fold_seq(cconv, cnorm)
        m = ghost.intrinsic_channels
        n = m + ghost.ghost_channels
        k = ghost.ghost_channels // m  # ghosts per intrinsic map: s - 1
        idx = torch.arange(n)
        if ghost.channel_order is not None:  # out[:, k] = cat[:, order[k]]: cat channel j is output inv[j]
            inv = torch.empty_like(ghost.channel_order)
            inv[ghost.channel_order] = torch.arange(n)
            idx = inv
        split = (cconv.groups == m and isinstance(norm, nn.Identity) and isinstance(cnorm, nn.Identity)
                 and type(cconv) is nn.Conv2d and type(conv) is nn.Conv2d and conv.groups == 1
                 and (k == 1 or SPLIT_MULTIPLIER))
        pad = (-m) % self.align if split and self.align > 1 else 0
        if pad * MAX_PAD_FRACTION_INV > m:  # a few intrinsic maps padded to 16 cost more than they save
            pad = 0
        if pad:
            # onnxruntime keeps its blocked NCHWc layout only for channel counts that are multiples
            # of its block (8 or 16): pad m with zero filters; the padding channels stay 0, every
            # consumer gives them zero weights and materialising drops them, so nothing changes.
            conv = _slice_conv(conv, torch.cat([torch.arange(m), torch.full((pad,), -1)]), None)
            self.padded += 1
        junk = torch.full((pad,), -1, dtype=torch.long)
        if isinstance(value, _Blocked) and not isinstance(act, _SUM_FUSABLE_ACTS) and CONCAT_BEFORE_OTHER_ACTS:
            # onnxruntime fuses only ReLU after a convolution that also adds (the split form
            # W_a a + W_b b); a ReLU6/Hardswish there would leave NCHWc (reorders + Clip): concat
            # the (block-aligned) parts instead, which stays in NCHWc.
            value = self.plain(value)
        y = self.conv(conv, value, qualname + ".primary")
        if not isinstance(norm, nn.Identity):
            y = self._call(norm, self.plain(y), qualname + ".primary_norm")
        if not isinstance(act, nn.Identity):
            y = self._call(act, self.plain(y), qualname + ".primary_act")
        y = self.plain(y)
        if split:
            # The cheap conv maps m -> (s-1)m with groups=m. For s > 2 that is a channel multiplier,
            # which onnxruntime runs in plain NCHW with layout reorders around it: split it into
            # s-1 true depthwise convolutions (same MACs). Ghost j of intrinsic map i is cat
            # channel m + i(s-1) + j, so part j holds those channels.
            nodes, parts = [y], [torch.cat([idx[:m], junk])]
            for j in range(k):
                sel = torch.arange(j, m * k, k)
                dw = _slice_conv(cconv, torch.cat([sel, junk]), None, depthwise=True)
                g = self._call(dw, y, qualname + f".cheap{j}")
                if not isinstance(cact, nn.Identity):
                    g = self._call(cact, g, qualname + ".cheap_act")
                nodes.append(g)
                parts.append(torch.cat([idx[m + sel], junk]))
            return _Blocked(nodes, parts)
        g = self._call(cconv, y, qualname + ".cheap")
        if not isinstance(cnorm, nn.Identity):
            g = self._call(cnorm, g, qualname + ".cheap_norm")
        if not isinstance(cact, nn.Identity):
            g = self._call(cact, g, qualname + ".cheap_act")
        return _Blocked([y, g], [idx[:m].clone(), idx[m:].clone()])

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
            if fn is operator.add and IDENTITY_ADD and not (self._fusable(x) or self._fusable(y)):
                # neither operand comes straight from a convolution (the intrinsic maps also feed
                # the cheap operation): a 1x1 depthwise identity convolution gives the Add (and
                # the ReLU after it) a convolution to fuse into: one pass over memory, not two.
                x = self._call(_identity_conv(len(idx)), x, "identity")
            nodes.append(self.graph.call_function(fn, (x, y)))
        return _Blocked(nodes, [i.clone() for i in va.idx])

    def _fusable(self, node: fx.Node) -> bool:
        """Produced by a convolution and read by nothing else yet: onnxruntime fuses an Add into it."""
        if node.op != "call_module" or len(node.users) != 0:
            return False
        return isinstance(self.modules.get(str(node.target)), nn.Conv2d)

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
            if type(mod) is nn.Conv2d and mod.out_channels == like.channels and len(emitted.args) == 1 \
                    and not emitted.kwargs and mod.groups == 1:
                source = emitted.args[0]
                self.graph.erase_node(emitted)
                self.split_convs += 1
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
            if node.op == "call_module" and isinstance(self.modules.get(str(node.target)), nn.Conv2d):
                conv = self.modules[str(node.target)]
                if conv.out_channels == like.channels and conv.groups == 1 and node.name not in self.want:
                    self.new_wants[node.name] = [i.clone() for i in like.idx]
                return
            through_bn = node.op == "call_module" and _foldable(self.modules.get(str(node.target)))
            if not (through_bn or self._channelwise(node)) or not node.args or not isinstance(node.args[0], fx.Node):
                return
            node = node.args[0]

    def _channelwise(self, node: fx.Node) -> bool:
        """Does ``node`` act on each channel alone (so it can run part by part)?"""
        if node.op == "call_module":
            return isinstance(self.modules.get(str(node.target)), _CHANNELWISE_MODULES)
        if node.op == "call_function":
            return node.target in _UNARY_FUNCTIONS
        if node.op == "call_method":
            if node.target in _UNARY_METHODS:
                return len(node.args) == 1 and not node.kwargs
            if node.target in ("mean", "amax", "sum"):
                dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
                dims = (dims,) if isinstance(dims, int) else dims
                return isinstance(dims, (tuple, list)) and bool(dims) and all(d in (2, 3, -1, -2) for d in dims)
        return False

    def _conv_or_split(self, node: fx.Node, conv: nn.Conv2d, value: fx.Node | _Blocked) -> fx.Node | _Blocked:
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
            if isinstance(mod, nn.Conv2d) and value is not None and once:
                # fold a BatchNorm that only reads this convolution
                users = list(node.users)
                if len(users) == 1 and users[0].op == "call_module" and users[0].args == (node,):
                    bn = self.modules.get(str(users[0].target))
                    if bn is not None and _foldable(bn) and self.calls[str(users[0].target)] == 1:
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
        fn = _BINARY.get(node.target) if node.op == "call_function" else _BINARY_METHODS.get(str(node.target)) \
            if node.op == "call_method" else None
        if fn is not None:
            out = self.binary(node, fn)
            if out is not None:
                return out
        return self.copy_node(node)


def _take(t: torch.Tensor, idx: torch.Tensor, dim: int) -> torch.Tensor:
    """``t`` indexed by ``idx`` along ``dim``; entries -1 (padding channels) give zeros."""
    out = t.index_select(dim, idx.clamp(min=0))
    if bool((idx < 0).any()):
        shape = [1] * t.dim()
        shape[dim] = len(idx)
        out = out * (idx >= 0).reshape(shape).to(t.dtype)
    return out


def _slice_conv(conv: nn.Conv2d, out_idx: torch.Tensor | None, in_idx: torch.Tensor | None,
                depthwise: bool = False, bias: bool = True, groups: int = 1) -> nn.Conv2d:
    """A copy of ``conv`` keeping output filters ``out_idx`` and input channels ``in_idx``.

    An index of -1 is a padding channel: a zero filter (or a zero input column).
    """
    w = conv.weight.detach()
    b = conv.bias.detach() if conv.bias is not None else None
    if out_idx is not None:
        w = _take(w, out_idx, 0)
        b = _take(b, out_idx, 0) if b is not None else None
    if in_idx is not None and not depthwise:
        w = _take(w, in_idx, 1)
    if not bias:
        b = None
    cin = w.shape[1] * (len(out_idx) if depthwise else groups)
    new = nn.Conv2d(cin, w.shape[0], conv.kernel_size, conv.stride,
                    conv.padding, conv.dilation, len(out_idx) if depthwise else groups, bias=b is not None,
                    padding_mode=conv.padding_mode, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if b is not None:
            new.bias.copy_(b)
    return new


def _identity_conv(channels: int) -> nn.Conv2d:
    conv = nn.Conv2d(channels, channels, 1, groups=channels, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    return conv


def _swap_in_place(model: nn.Module) -> nn.Module:
    for name, mod in list(model.named_modules()):
        if isinstance(mod, GhostModule):
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attr, DeployedGhost(mod))
    return model


def deploy(model: nn.Module, *, align: int = 16) -> nn.Module:
    """The deployment form of ``model``: same outputs in eval mode, fewer ops around the convolutions.

    ``align``: pad each Ghost module's intrinsic count ``m`` with zero filters up to a multiple
    of ``align`` (16: onnxruntime's NCHWc block on AVX-512, a multiple of AVX2's 8); 0 or 1
    disables it. The padding channels never reach an output.

    Returns a new module in eval mode (the input is untouched) carrying ``ghostify_deploy_notes``
    (what could not be kept concat-free, and why). Works for original and converted models
    alike, so both go through the same export path. Inference only: the folded BatchNorms
    no longer track statistics.
    """
    work = copy.deepcopy(model).eval()
    notes: list[str] = []
    try:
        gm = work if isinstance(work, fx.GraphModule) else trace(work)
    except Exception as exc:  # untraceable: Ghost modules folded in place, concat kept
        out = _swap_in_place(work)
        notes.append(f"fx could not trace the model ({type(exc).__name__}); Ghost modules keep their concat")
        setattr(out, DEPLOY_NOTES_ATTR, notes)
        return out.eval()
    want: dict[str, list[torch.Tensor]] = {}
    for _ in range(4):  # each pass may find convolutions a later Add wants split; rarely more than 2
        builder = _Builder(gm, want, align=align)
        graph = builder.run()
        if not builder.new_wants:
            break
        want.update(builder.new_wants)
    graph.lint()
    gm.graph = graph
    gm.recompile()
    gm.delete_all_unused_submodules()
    notes += builder.notes
    setattr(gm, DEPLOY_NOTES_ATTR, notes)
    for attr in ("ghostify_plan",):
        if hasattr(model, attr):
            setattr(gm, attr, getattr(model, attr))
    return gm.eval()
