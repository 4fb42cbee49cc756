"""Channel surgery: every operation that takes convolutions and norms apart by channel, in one place.

Building a Ghost module from a convolution, splitting its BatchNorm, writing a transfer fit into
it, folding BatchNorm for deployment and splitting convolutions into parts all come down to a
handful of index operations on weight tensors. They live here, for 1-, 2- and 3-D layers alike,
so that each rule (which filters a grouped convolution may keep, what a padding index means) is
written once.

Index convention: an index of ``-1`` is a *padding channel*: a zero filter (or a zero input
column), used to round channel counts up to the engine's block size.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["CONV_TYPES", "NORM_TYPES", "conv_class", "norm_class", "spatial_dims", "plain_conv", "filter_index",
           "select_filters", "split_norm", "copy_norm_channels", "fold_bn", "foldable", "take", "slice_conv",
           "identity_conv", "module_device", "module_dtype"]

CONV_TYPES: dict[int, type[nn.Module]] = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
NORM_TYPES: dict[int, type[nn.Module]] = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_PLAIN_CONVS = tuple(CONV_TYPES.values())


def conv_class(dims: int) -> type[nn.Module]:
    return CONV_TYPES[dims]


def norm_class(dims: int) -> type[nn.Module]:
    return NORM_TYPES[dims]


def plain_conv(module: object) -> bool:
    """Whether ``module`` computes exactly the convolution of its weight: an ``nn.Conv1d/2d/3d``, or
    a subclass that keeps their forward (torchvision's video ``Conv3DSimple`` and
    ``Conv3DNoTemporal`` only add a constructor). Such a module may be sliced, folded and copied
    with fewer filters without changing its meaning; a parametrized one (its weight computed)
    may not.
    """
    base = next((c for c in _PLAIN_CONVS if isinstance(module, c)), None)
    if base is None:
        return False
    cls = type(module)
    if cls.forward is not base.forward or cls._conv_forward is not base._conv_forward:
        return False
    return not torch.nn.utils.parametrize.is_parametrized(module)


def spatial_dims(conv: nn.Module) -> int:
    """1, 2 or 3: how many spatial axes a convolution slides over."""
    return len(conv.kernel_size)


def module_device(module: nn.Module) -> torch.device | None:
    t = next(module.parameters(), None)
    if t is None:
        t = next(module.buffers(), None)
    return None if t is None else t.device


def module_dtype(module: nn.Module) -> torch.dtype | None:
    t = next(module.parameters(), None)
    return None if t is None else t.dtype


def filter_index(n: int, m: int, groups: int) -> torch.Tensor:
    """Which of n filters a convolution keeps when it shrinks to m.

    With groups, filter j of a grouped conv reads input group j // (n / groups); keep the first
    m / groups filters of every group so that each kept filter still reads its own inputs.
    """
    per_old, per_new = n // groups, m // groups
    return torch.tensor([g * per_old + i for g in range(groups) for i in range(per_new)], dtype=torch.long)


def select_filters(conv: nn.Module, idx: torch.Tensor) -> nn.Module:
    """A copy of ``conv`` (same class, so subclasses keep their own forward) keeping filters ``idx``.

    Every per-filter tensor (weight, bias, timm's weight-standardisation gain) is indexed alike.
    """
    n = conv.out_channels
    primary = copy.deepcopy(conv)
    primary.out_channels = len(idx)
    with torch.no_grad():
        for name, p in list(primary.named_parameters(recurse=False)):
            if p.dim() >= 1 and p.shape[0] == n:
                setattr(primary, name, nn.Parameter(p[idx].clone(), requires_grad=p.requires_grad))
        for name, b in list(primary.named_buffers(recurse=False)):
            if b is not None and b.dim() >= 1 and b.shape[0] == n:
                primary._buffers[name] = b[idx].clone()
    return primary


def split_norm(norm: nn.Module, start: int, count: int) -> nn.Module:
    """A BatchNorm over ``count`` channels with ``norm``'s settings and its channels from ``start``."""
    new = type(norm)(count, eps=norm.eps, momentum=norm.momentum, affine=norm.affine,
                     track_running_stats=norm.track_running_stats, device=module_device(norm),
                     dtype=module_dtype(norm))
    stop = min(start + count, norm.num_features)
    k = max(0, stop - start)
    with torch.no_grad():
        if norm.affine and k:
            new.weight[:k].copy_(norm.weight[start:stop])
            new.bias[:k].copy_(norm.bias[start:stop])
        if norm.track_running_stats and norm.running_mean is not None and k:
            new.running_mean[:k].copy_(norm.running_mean[start:stop])
            new.running_var[:k].copy_(norm.running_var[start:stop])
            new.num_batches_tracked.copy_(norm.num_batches_tracked)
    return new


@torch.no_grad()
def copy_norm_channels(dst: nn.Module, src: nn.Module, dst_idx: list[int], src_idx: list[int]) -> None:
    """``dst`` channels ``dst_idx`` take ``src`` channels ``src_idx`` (affine and running statistics)."""
    di = torch.tensor(dst_idx, dtype=torch.long)
    si = torch.tensor(src_idx, dtype=torch.long)
    if dst.affine and src.affine:
        dst.weight[di] = src.weight.detach()[si]
        dst.bias[di] = src.bias.detach()[si]
    if dst.running_mean is not None and src.running_mean is not None:
        dst.running_mean[di] = src.running_mean[si]
        dst.running_var[di] = src.running_var[si]
    dst.eps = src.eps


def foldable(conv: nn.Module, norm: nn.Module) -> bool:
    """Whether ``norm`` folds into ``conv``'s weights: an eval-mode BatchNorm after a convolution
    whose forward uses its weight as it is (not timm's weight-standardised convolutions)."""
    if type(norm) not in NORM_TYPES.values() or norm.running_mean is None or norm.running_var is None:
        return False
    return plain_conv(conv) or type(conv).__name__ == "Conv2dSame"


def fold_bn(conv: nn.Module, bn: nn.Module) -> nn.Module:
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


def take(t: torch.Tensor, idx: torch.Tensor, dim: int) -> torch.Tensor:
    """``t`` indexed by ``idx`` along ``dim``; entries -1 (padding channels) give zeros."""
    out = t.index_select(dim, idx.clamp(min=0))
    if bool((idx < 0).any()):
        shape = [1] * t.dim()
        shape[dim] = len(idx)
        out = out * (idx >= 0).reshape(shape).to(t.dtype)
    return out


def slice_conv(conv: nn.Module, out_idx: torch.Tensor | None, in_idx: torch.Tensor | None, *,
               depthwise: bool = False, bias: bool = True, groups: int = 1) -> nn.Module:
    """A plain convolution computing filters ``out_idx`` of ``conv`` on input channels ``in_idx``.

    ``depthwise``: ``conv`` is depthwise and ``out_idx`` names channels (filter i reads channel i).
    ``groups``: the groups of the result (with ``in_idx`` None: the input stays whole).
    """
    w = conv.weight.detach()
    b = conv.bias.detach() if conv.bias is not None else None
    if out_idx is not None:
        w = take(w, out_idx, 0)
        b = take(b, out_idx, 0) if b is not None else None
    if in_idx is not None and not depthwise:
        w = take(w, in_idx, 1)
    if not bias:
        b = None
    groups = len(out_idx) if depthwise else groups
    new = conv_class(w.dim() - 2)(w.shape[1] * groups, w.shape[0], conv.kernel_size, conv.stride, conv.padding,
                                  conv.dilation, groups, bias=b is not None, padding_mode=conv.padding_mode,
                                  device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if b is not None:
            new.bias.copy_(b)
    return new


def identity_conv(channels: int, dims: int = 2, like: nn.Module | None = None) -> nn.Module:
    """A 1x1 depthwise convolution that passes its input through (a node onnxruntime can fuse into).

    ``like``: a module whose device and dtype it takes (a float64 or CUDA model stays one).
    """
    device, dtype = (module_device(like), module_dtype(like)) if like is not None else (None, None)
    conv = conv_class(dims)(channels, channels, 1, groups=channels, bias=False, device=device, dtype=dtype)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    return conv
