"""The Ghost module (GhostNet §3.1, Fig. 2b), for 1-, 2- and 3-D convolutions.

An ordinary convolution producing ``n`` maps from ``c`` inputs is replaced by

* a *primary* convolution producing ``m = ceil(n / s)`` **intrinsic** maps, with the original
  kernel size, stride, padding, dilation and groups (m rounded up to a multiple of groups), then
* a *cheap operation*: a depthwise ``d x d`` convolution (``d`` / ``d x d x d`` in 1-D / 3-D;
  see :func:`ghostify.policy.cheap_kernel`) giving each intrinsic map ``s - 1`` **ghost** maps,

concatenated as ``[intrinsic, ghosts]`` (the identity of Eq. 3 keeps the intrinsic maps) and
sliced to ``n`` only when ``s`` does not divide ``n``.

Submodule names (``primary_conv``, ``cheap_operation``, each ``Sequential(conv, norm, act)``)
match the official code and timm's ``GhostModule`` so their state_dicts load here unchanged.

The module owns its deployment form: :meth:`GhostModule.fuse` returns a :class:`FusedGhost`
(BatchNorm folded, intrinsic count padded to the engine's block, the cheap channel multiplier
split into true depthwise convolutions) that :func:`ghostify.deploy` places into the graph and
that can be exported and timed on its own.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ghostify.errors import GhostifyError
from ghostify.layers.surgery import (
    conv_class,
    filter_index,
    fold_bn,
    foldable,
    norm_class,
    plain_conv,
    select_filters,
    slice_conv,
    split_norm,
)

__all__ = ["GhostModule", "FusedGhost", "FuseOptions", "validate_ratio_and_kernel", "intrinsic_channels",
           "cheap_kernel"]

MAX_RATIO = 2**16
MAX_CHEAP_KERNEL = 2**10
_AUTO = object()  # the norm_layer default: the BatchNorm of the module's dimensionality


def validate_ratio_and_kernel(s: object, d: object) -> tuple[int, int]:
    """Check the paper's two hyper-parameters; return them as ints or raise a clear error.

    ``s`` (ratio) is an integer >= 1. ``d`` (cheap kernel) is an odd integer >= 1: an even
    kernel cannot be padded symmetrically, so its ghost maps would be shifted by half a pixel.
    """
    if isinstance(s, bool) or not isinstance(s, int) or s < 1:
        raise GhostifyError(f"ratio s must be an integer >= 1, got {s!r}", param="s")
    if isinstance(d, bool) or not isinstance(d, int) or d < 1:
        raise GhostifyError(f"cheap kernel d must be an integer >= 1, got {d!r}", param="d")
    if s > MAX_RATIO or d > MAX_CHEAP_KERNEL:  # beyond any layer's width / any feature map: a typo
        raise GhostifyError(f"ratio s and cheap kernel d must be at most {MAX_RATIO} and {MAX_CHEAP_KERNEL}, "
                            f"got s={s}, d={d}", param="s" if s > MAX_RATIO else "d")
    if d % 2 == 0:
        raise GhostifyError(
            f"cheap kernel d must be odd (1, 3, 5, 7...), got {d}: an even depthwise kernel "
            "cannot be padded symmetrically and would shift the ghost maps by half a pixel", param="d")
    return s, d


def intrinsic_channels(n: int, s: int, groups: int = 1) -> int:
    """m = ceil(n / s), rounded up to a multiple of ``groups`` so the primary conv keeps them."""
    m = math.ceil(n / s)
    if m % groups:  # a conv requires groups | n, so rounding up never exceeds n
        m = math.ceil(m / groups) * groups
    return m


def cheap_kernel(k: Sequence[int], d: int) -> tuple[int, ...]:
    """The cheap operation's kernel for a primary kernel ``k``: d along every axis it convolves.

    The paper's d x d for square kernels. A kernel of 1 along some axes but not all (a (k, 1)
    audio kernel, Inception's 1 x 7) treats those axes as non-spatial: the cheap operation is 1
    there too, so it spends no taps on an axis the layer never mixes. A 1 x 1 kernel gets d x d.
    """
    k = tuple(int(v) for v in k)
    if all(v == 1 for v in k):
        return (d,) * len(k)
    return tuple(d if v > 1 else 1 for v in k)


def _cheap_conv(m: int, s: int, d: int, k: Sequence[int], bias: bool, device: torch.device | None,
                dtype: torch.dtype | None) -> nn.Module:
    kernel = cheap_kernel(k, d)
    return conv_class(len(k))(m, m * (s - 1), kernel, 1, tuple(v // 2 for v in kernel), groups=m, bias=bias,
                              device=device, dtype=dtype)


def _tuple(v: int | Sequence[int], dims: int) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, (tuple, list)) else (int(v),) * dims


def _alias(value: object, alias: object, name: str, alias_name: str) -> object:
    if alias is not None:
        if value is not None:
            raise GhostifyError(f"give {name} or its alias {alias_name}, not both")
        return alias
    return value


class GhostModule(nn.Module):
    """Drop-in replacement for a convolution with ``c`` inputs and ``n`` outputs.

    Args:
        c, n, kernel_size, stride, padding, dilation, groups, bias, padding_mode: as the
            convolution (``in_channels``, ``out_channels`` ...); they define the primary one.
        s: the ratio: 1/s of the outputs are intrinsic, the rest ghosts (alias ``ratio``).
        d: the kernel of the depthwise cheap operation (alias ``dw_size``).
        norm_layer: a factory ``channels -> module`` applied after the primary and the cheap
            convolution (the paper's form; default the BatchNorm of ``dims``), or None for a
            linear module.
        act_layer: a factory ``() -> module`` (e.g. ``nn.ReLU``) applied after each norm, or None.
        dims: 1, 2 or 3 spatial dimensions (default: the length of a tuple ``kernel_size``, else 2).

    With ``s=1`` there is no cheap operation: the module is its primary convolution.
    """

    def __init__(
        self,
        c: int | None = None,
        n: int | None = None,
        kernel_size: int | Sequence[int] = 1,
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] | str | None = None,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        bias: bool = False,
        s: int | None = None,
        d: int | None = None,
        norm_layer: Callable[[int], nn.Module] | None = _AUTO,  # type: ignore[assignment]
        act_layer: Callable[[], nn.Module] | None = nn.ReLU,
        padding_mode: str = "zeros",
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
        *,
        dims: int | None = None,
        in_channels: int | None = None,
        out_channels: int | None = None,
        ratio: int | None = None,
        dw_size: int | None = None,
    ) -> None:
        c = _alias(c, in_channels, "c", "in_channels")
        n = _alias(n, out_channels, "n", "out_channels")
        if c is None or n is None:
            raise GhostifyError("GhostModule needs c (in_channels) and n (out_channels)")
        s, d = _alias(s, ratio, "s", "ratio"), _alias(d, dw_size, "d", "dw_size")
        s, d = validate_ratio_and_kernel(2 if s is None else s, 3 if d is None else d)
        dims = dims or (len(kernel_size) if isinstance(kernel_size, (tuple, list)) else 2)
        if dims not in (1, 2, 3):
            raise GhostifyError(f"dims must be 1, 2 or 3, got {dims}", param="dims")
        k = _tuple(kernel_size, dims)
        if padding is None:  # "same" for odd kernels, as the official code's k // 2
            padding = tuple(v // 2 for v in k)
        if c % groups:
            raise GhostifyError(f"groups={groups} must divide c={c}", param="groups")
        if norm_layer is _AUTO:
            norm_layer = norm_class(dims)
        m = intrinsic_channels(n, s, groups)
        dd = {"device": device, "dtype": dtype}
        primary = conv_class(dims)(c, m, k, stride, padding, dilation, groups, bias=bias, padding_mode=padding_mode,
                                   **dd)
        act = act_layer() if act_layer is not None else None
        cheap = norm_cheap = None
        if s > 1:
            cheap = _cheap_conv(m, s, d, k, bias and norm_layer is None, device, dtype)
            norm_cheap = norm_layer(m * (s - 1)) if norm_layer is not None else None
        super().__init__()
        self._build(primary, norm_layer(m) if norm_layer is not None else None, act, cheap, norm_cheap,
                    copy.deepcopy(act) if act is not None else None, n, s, d)
        if device is not None or dtype is not None:
            self.to(**{key: v for key, v in dd.items() if v is not None})

    def _build(self, primary: nn.Module, norm_primary: nn.Module | None, act_primary: nn.Module | None,
               cheap: nn.Module | None, norm_cheap: nn.Module | None, act_cheap: nn.Module | None,
               n: int, s: int, d: int) -> None:
        self.s = s
        self.d = d
        self.c = primary.in_channels
        self.n = n
        self.m = primary.out_channels  # intrinsic maps
        self.dims = len(primary.kernel_size)
        self.ghost_channels = 0 if cheap is None else cheap.out_channels
        self.kernel_size = primary.kernel_size
        self.stride = primary.stride
        self.padding = primary.padding
        self.dilation = primary.dilation
        self.groups = primary.groups
        # Slice only when s does not divide n: a no-op Slice costs a layout change downstream.
        self.trim = self.m + self.ghost_channels != n
        self.primary_conv = nn.Sequential(primary, norm_primary or nn.Identity(), act_primary or nn.Identity())
        self.cheap_operation = (
            None if cheap is None else nn.Sequential(cheap, norm_cheap or nn.Identity(), act_cheap or nn.Identity())
        )
        # Optional output permutation (set by transfer init to keep the original channel order).
        self.register_buffer("channel_order", None)

    # nn.Conv-style names, for code that inspects convolutions generically
    @property
    def in_channels(self) -> int:
        return self.c

    @property
    def out_channels(self) -> int:
        return self.n

    @property
    def intrinsic_channels(self) -> int:
        return self.m

    @classmethod
    def from_conv(cls, conv: nn.Module, s: int = 2, d: int = 3, norm: nn.Module | None = None,
                  act: nn.Module | None = None) -> GhostModule:
        """Build the Ghost module that replaces ``conv`` (followed by ``norm`` and ``act``, if given).

        The primary convolution is a copy of ``conv`` (same class, so ``Conv2dSame`` or a
        weight-standardised conv keeps its meaning) holding its first m filters (of each group);
        its norm holds the matching channels of ``norm``. The cheap operation starts from
        PyTorch's default init: with s=1 the module is exactly the convolution, and
        ``ghostify.convert(init=...)`` decides what happens next.
        """
        s, d = validate_ratio_and_kernel(s, d)
        n = conv.out_channels
        m = intrinsic_channels(n, s, conv.groups)
        primary = select_filters(conv, filter_index(n, m, conv.groups)) if m != n else copy.deepcopy(conv)
        cheap = norm_cheap = None
        if s > 1:
            cheap = _cheap_conv(m, s, d, conv.kernel_size, norm is None and conv.bias is not None,
                                conv.weight.device, conv.weight.dtype)
            norm_cheap = split_norm(norm, m, m * (s - 1)) if norm is not None else None
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self._build(primary, split_norm(norm, 0, m) if norm is not None else None,
                    copy.deepcopy(act) if act is not None else None, cheap, norm_cheap,
                    copy.deepcopy(act) if act is not None else None, n, s, d)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        intrinsic = self.primary_conv(x)
        if self.cheap_operation is None:
            out = intrinsic
        else:
            out = torch.cat([intrinsic, self.cheap_operation(intrinsic)], dim=1)
        if self.trim:
            out = out[:, : self.n]
        if self.channel_order is not None:
            out = out.index_select(1, self.channel_order)
        return out

    def output_index(self) -> torch.Tensor:
        """idx[j] = the output channel that channel j of ``[intrinsic, ghosts]`` becomes."""
        total = self.m + self.ghost_channels
        idx = torch.arange(total)
        if self.channel_order is not None:  # out[:, o] = cat[:, order[o]]
            idx = torch.full((total,), -1, dtype=torch.long)
            idx[self.channel_order.cpu()] = torch.arange(self.n)
        elif self.trim:
            idx[self.n:] = -1
        return idx

    def fuse(self, options: FuseOptions | None = None) -> FusedGhost:
        """The deployment form of this module alone: same function in eval mode (see :class:`FusedGhost`)."""
        return FusedGhost.from_ghost(self, options or FuseOptions())

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):  # noqa: D401 - torch hook
        # channel_order exists only on transferred modules: create the slot when a checkpoint has it.
        key = prefix + "channel_order"
        if key in state_dict and self.channel_order is None:
            self.channel_order = torch.empty_like(state_dict[key])
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        return (f"{self.c}, {self.n}, kernel_size={self.kernel_size}, stride={self.stride}, s={self.s}, "
                f"d={self.d}, intrinsic={self.m}, ghost={self.ghost_channels}")


@dataclass(frozen=True)
class FuseOptions:
    """How a Ghost module lays itself out for an inference engine (docs/deploy.md measures each rule).

    align: pad the intrinsic count m with zero filters up to a multiple of this (16: onnxruntime's
        NCHWc block on AVX-512, a multiple of AVX2's 8); 0 or 1 disables it.
    max_pad_fraction_inv: pad only when that costs at most m / this many extra filters.
    split_multiplier: s > 2: the cheap convolution's channel multiplier becomes s-1 true
        depthwise convolutions (onnxruntime runs a multiplier in plain NCHW, with reorders).
    """

    align: int = 16
    max_pad_fraction_inv: int = 4
    split_multiplier: bool = True


class FusedGhost(nn.Module):
    """A Ghost module laid out for deployment: BatchNorm folded, its output kept as *parts*.

    ``parts[0]`` is the (padded) intrinsic part, ``parts[1:]`` the ghost parts; ``index[i][j]`` is
    the output channel held by channel j of part i (-1: a padding or trimmed channel, never an
    output). :meth:`forward` gives the module's output in the original channel order;
    :meth:`forward_parts` gives the parts, which the graph pass keeps apart when every consumer
    allows it (``blocked``). A module that cannot fold or split (s not dividing n, a norm other
    than BatchNorm, a weight-standardised convolution) stays one block: conv, norm, act, cheap
    operation, concat, slice.
    """

    def __init__(self, primary: nn.Sequential, cheap: list[nn.Sequential], index: list[torch.Tensor],
                 blocked: bool) -> None:
        super().__init__()
        self.primary = primary
        self.cheap = nn.ModuleList(cheap)
        self.blocked = blocked
        for i, idx in enumerate(index):
            self.register_buffer(f"index{i}", idx)
        self.parts = len(index)
        order = torch.cat(index)
        real = order >= 0
        inverse = torch.empty(int(real.sum()), dtype=torch.long)
        inverse[order[real]] = torch.nonzero(real).flatten()
        in_order = bool(torch.equal(inverse, torch.arange(len(inverse))))
        # decided here, not in forward: exporters trace forward and cannot branch on buffer values
        self.layout = "as-is" if in_order and bool(real.all()) else "prefix" if in_order else "permuted"
        self.register_buffer("inverse", inverse)

    @property
    def index(self) -> list[torch.Tensor]:
        return [getattr(self, f"index{i}") for i in range(self.parts)]

    @classmethod
    def from_ghost(cls, ghost: GhostModule, options: FuseOptions) -> FusedGhost:
        conv, norm = _fold(*ghost.primary_conv[:2])
        act = ghost.primary_conv[2]
        idx, m = ghost.output_index(), ghost.m
        if ghost.cheap_operation is None:
            return cls(nn.Sequential(conv, norm, act), [], [idx], blocked=False)
        cconv, cnorm = _fold(*ghost.cheap_operation[:2])
        cact = ghost.cheap_operation[2]
        if ghost.trim:  # a Slice (or its equivalent) is needed anyway: keep the concat form
            return cls(nn.Sequential(conv, norm, act), [nn.Sequential(cconv, cnorm, cact)], [idx[:m], idx[m:]],
                       blocked=False)
        plain = conv_class(ghost.dims)
        k = ghost.s - 1  # ghosts per intrinsic map
        split = (cconv.groups == m and isinstance(norm, nn.Identity) and isinstance(cnorm, nn.Identity)
                 and type(cconv) is plain and plain_conv(conv) and conv.groups == 1
                 and (k == 1 or options.split_multiplier))
        if not split:
            return cls(nn.Sequential(conv, norm, act), [nn.Sequential(cconv, cnorm, cact)], [idx[:m], idx[m:]],
                       blocked=True)
        pad = (-m) % options.align if options.align > 1 else 0
        if pad * options.max_pad_fraction_inv > m:  # a few intrinsic maps padded to 16 cost more than they save
            pad = 0
        junk = torch.full((pad,), -1, dtype=torch.long)
        if pad:
            # onnxruntime keeps its blocked NCHWc layout only for channel counts that are multiples
            # of its block: zero filters pad m; their channels are -1, so no consumer reads them.
            conv = slice_conv(conv, torch.cat([torch.arange(m), junk]), None)
        # The cheap conv maps m -> (s-1)m with groups=m; for s > 2 that is a channel multiplier,
        # which onnxruntime runs in plain NCHW: split it into s-1 true depthwise convolutions (same
        # MACs). Ghost j of intrinsic map i is cat channel m + i(s-1) + j, so part j holds those.
        cheap, index = [], [torch.cat([idx[:m], junk])]
        for j in range(k):
            sel = torch.arange(j, m * k, k)
            cheap.append(nn.Sequential(slice_conv(cconv, torch.cat([sel, junk]), None, depthwise=True),
                                       nn.Identity(), copy.deepcopy(cact)))
            index.append(torch.cat([idx[m + sel], junk]))
        return cls(nn.Sequential(conv, nn.Identity(), act), cheap, index, blocked=True)

    def forward_parts(self, x: torch.Tensor) -> list[torch.Tensor]:
        y = self.primary(x)
        return [y] + [cheap(y) for cheap in self.cheap]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = self.forward_parts(x)
        out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        if self.layout == "as-is":
            return out
        if self.layout == "prefix":
            return out[:, : self.inverse.shape[0]]
        return out.index_select(1, self.inverse)


def _fold(conv: nn.Module, norm: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(conv with norm folded, Identity) when the norm folds, else (conv, norm) unchanged."""
    if foldable(conv, norm):
        return fold_bn(conv, norm), nn.Identity()
    return conv, norm
