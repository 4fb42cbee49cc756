"""The Ghost module (GhostNet §3.1, Fig. 2b).

An ordinary convolution producing ``n`` maps is replaced by

* a *primary* convolution producing ``m = ceil(n / s)`` **intrinsic** maps, with the original
  kernel size, stride, padding, dilation and groups (m rounded up to a multiple of groups), then
* a *cheap operation*: a depthwise ``d x d`` convolution giving each intrinsic map ``s - 1``
  **ghost** maps,

concatenated as ``[intrinsic, ghosts]`` (the identity of Eq. 3 keeps the intrinsic maps) and
sliced to ``n`` only when ``s`` does not divide ``n``.

Submodule names (``primary_conv``, ``cheap_operation``, each ``Sequential(conv, norm, act)``)
match the official code and timm's ``GhostModule`` so their state_dicts load here unchanged.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
from torch import nn

from ghostify.errors import GhostifyError

__all__ = ["GhostModule", "validate_ratio_and_kernel", "intrinsic_channels"]


MAX_RATIO = 2**16
MAX_CHEAP_KERNEL = 2**10


def validate_ratio_and_kernel(s: object, d: object) -> tuple[int, int]:
    """Check the paper's two hyper-parameters; return them as ints or raise a clear error.

    ``s`` (ratio) is an integer >= 1. ``d`` (cheap kernel) is an odd integer >= 1: an even
    kernel cannot be padded symmetrically, so its ghost maps would be shifted by half a pixel.
    """
    if isinstance(s, bool) or not isinstance(s, int) or s < 1:
        raise GhostifyError(f"ratio s must be an integer >= 1, got {s!r}")
    if isinstance(d, bool) or not isinstance(d, int) or d < 1:
        raise GhostifyError(f"cheap kernel d must be an integer >= 1, got {d!r}")
    if s > MAX_RATIO or d > MAX_CHEAP_KERNEL:  # beyond any layer's width / any feature map: a typo
        raise GhostifyError(f"ratio s and cheap kernel d must be at most {MAX_RATIO} and {MAX_CHEAP_KERNEL}, "
                            f"got s={s}, d={d}")
    if d % 2 == 0:
        raise GhostifyError(
            f"cheap kernel d must be odd (1, 3, 5, 7...), got {d}: an even depthwise kernel "
            "cannot be padded symmetrically and would shift the ghost maps by half a pixel"
        )
    return s, d


def intrinsic_channels(n: int, s: int, groups: int = 1) -> int:
    """m = ceil(n / s), rounded up to a multiple of ``groups`` so the primary conv keeps them."""
    m = math.ceil(n / s)
    if m % groups:  # a conv requires groups | n, so rounding up never exceeds n
        m = math.ceil(m / groups) * groups
    return m


def _filter_index(n: int, m: int, groups: int) -> torch.Tensor:
    """Which of the original n filters become the m primary filters.

    With groups, filter j of a grouped conv reads input group j // (n / groups); keep the first
    m / groups filters of every group so that each kept filter still reads its own inputs.
    """
    per_old, per_new = n // groups, m // groups
    return torch.tensor([g * per_old + i for g in range(groups) for i in range(per_new)])


def _shrink_conv(conv: nn.Conv2d, m: int) -> nn.Conv2d:
    """A copy of ``conv`` (same class, so subclasses keep their own forward) with m filters.

    The primary convolution starts from the original's filters: with s=1 the Ghost module is
    exactly the original convolution; `ghostify.convert(init=...)` decides what happens next.
    """
    n = conv.out_channels
    idx = _filter_index(n, m, conv.groups)
    primary = copy.deepcopy(conv)
    primary.out_channels = m
    with torch.no_grad():
        for name, p in list(primary.named_parameters(recurse=False)):
            if p.dim() >= 1 and p.shape[0] == n:
                setattr(primary, name, nn.Parameter(p[idx].clone(), requires_grad=p.requires_grad))
        for name, b in list(primary.named_buffers(recurse=False)):
            if b is not None and b.dim() >= 1 and b.shape[0] == n:
                primary._buffers[name] = b[idx].clone()
    return primary


def _split_norm(norm: nn.BatchNorm2d, start: int, count: int) -> nn.BatchNorm2d:
    """A BatchNorm over ``count`` channels carrying ``norm``'s settings and its channels from start."""
    new = nn.BatchNorm2d(count, eps=norm.eps, momentum=norm.momentum, affine=norm.affine,
                         track_running_stats=norm.track_running_stats,
                         device=_device_of(norm), dtype=_dtype_of(norm))
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


def _device_of(module: nn.Module) -> torch.device | None:
    t = next(module.parameters(), None)
    if t is None:
        t = next(module.buffers(), None)
    return None if t is None else t.device


def _dtype_of(module: nn.Module) -> torch.dtype | None:
    t = next(module.parameters(), None)
    return None if t is None else t.dtype


class GhostModule(nn.Module):
    """Drop-in replacement for a 2-D convolution producing ``out_channels`` maps.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
        padding_mode: as ``nn.Conv2d``; they define the primary convolution.
        ratio: the paper's ``s``: 1/s of the outputs are intrinsic, the rest ghosts.
        dw_size: the paper's ``d``: kernel of the depthwise cheap operation.
        norm_layer: a factory ``channels -> module`` (e.g. ``nn.BatchNorm2d``) applied after the
            primary and the cheap convolution (the paper's form), or None for a linear module.
        act_layer: a factory ``() -> module`` (e.g. ``nn.ReLU``) applied after each norm, or None.

    With ``ratio=1`` there is no cheap operation: the module is its primary convolution.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int] = 1,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str | None = None,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = False,
        ratio: int = 2,
        dw_size: int = 3,
        norm_layer: Callable[[int], nn.Module] | None = nn.BatchNorm2d,
        act_layer: Callable[[], nn.Module] | None = nn.ReLU,
        padding_mode: str = "zeros",
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        s, d = validate_ratio_and_kernel(ratio, dw_size)
        if padding is None:  # "same" for odd kernels, as the official code's k // 2
            ks = kernel_size if isinstance(kernel_size, tuple) else (kernel_size, kernel_size)
            padding = (ks[0] // 2, ks[1] // 2)
        if in_channels % groups:
            raise GhostifyError(f"groups={groups} must divide in_channels={in_channels}")
        m = intrinsic_channels(out_channels, s, groups)
        dd = {"device": device, "dtype": dtype}
        primary = nn.Conv2d(in_channels, m, kernel_size, stride, padding, dilation, groups,
                            bias=bias, padding_mode=padding_mode, **dd)
        norm_primary = norm_layer(m) if norm_layer is not None else None
        act = act_layer() if act_layer is not None else None
        cheap = None
        if s > 1:
            cheap = nn.Conv2d(m, m * (s - 1), d, 1, d // 2, groups=m,
                              bias=bias and norm_layer is None, **dd)
        super().__init__()
        self._build(primary, norm_primary, act, cheap,
                    norm_layer(m * (s - 1)) if (norm_layer is not None and s > 1) else None,
                    copy.deepcopy(act) if act is not None else None, out_channels, s, d)
        if dd["device"] is not None or dd["dtype"] is not None:
            self.to(**{k: v for k, v in dd.items() if v is not None})

    def _build(self, primary: nn.Module, norm_primary: nn.Module | None, act_primary: nn.Module | None,
               cheap: nn.Module | None, norm_cheap: nn.Module | None, act_cheap: nn.Module | None,
               out_channels: int, s: int, d: int) -> None:
        self.s = s
        self.d = d
        self.in_channels = primary.in_channels
        self.out_channels = out_channels
        self.intrinsic_channels = primary.out_channels
        self.ghost_channels = 0 if cheap is None else cheap.out_channels
        self.kernel_size = primary.kernel_size
        self.stride = primary.stride
        self.padding = primary.padding
        self.dilation = primary.dilation
        self.groups = primary.groups
        # Slice only when s does not divide n: a no-op Slice costs a layout change downstream.
        self.trim = self.intrinsic_channels + self.ghost_channels != out_channels
        self.primary_conv = nn.Sequential(primary, norm_primary or nn.Identity(), act_primary or nn.Identity())
        self.cheap_operation = (
            None if cheap is None else nn.Sequential(cheap, norm_cheap or nn.Identity(), act_cheap or nn.Identity())
        )
        # Optional output permutation (set by transfer init to keep the original channel order).
        self.register_buffer("channel_order", None)

    @classmethod
    def from_conv(
        cls,
        conv: nn.Conv2d,
        s: int = 2,
        d: int = 3,
        norm: nn.BatchNorm2d | None = None,
        act: nn.Module | None = None,
    ) -> GhostModule:
        """Build the Ghost module that replaces ``conv`` (followed by ``norm`` and ``act``, if given).

        The primary convolution is a copy of ``conv`` (same class, so ``Conv2dSame`` or a
        weight-standardised conv keeps its meaning) holding its first m filters; its norm holds
        the matching channels of ``norm``. The cheap operation starts from PyTorch's default init.
        """
        s, d = validate_ratio_and_kernel(s, d)
        n = conv.out_channels
        m = intrinsic_channels(n, s, conv.groups)
        primary = _shrink_conv(conv, m) if m != n else copy.deepcopy(conv)
        dev, dt = conv.weight.device, conv.weight.dtype
        norm_primary = _split_norm(norm, 0, m) if norm is not None else None
        cheap = norm_cheap = None
        if s > 1:
            cheap = nn.Conv2d(m, m * (s - 1), d, 1, d // 2, groups=m,
                              bias=norm is None and conv.bias is not None, device=dev, dtype=dt)
            if norm is not None:
                norm_cheap = _split_norm(norm, m, m * (s - 1))
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self._build(primary, norm_primary, copy.deepcopy(act) if act is not None else None,
                    cheap, norm_cheap, copy.deepcopy(act) if act is not None else None, n, s, d)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        intrinsic = self.primary_conv(x)
        if self.cheap_operation is None:
            out = intrinsic
        else:
            out = torch.cat([intrinsic, self.cheap_operation(intrinsic)], dim=1)
        if self.trim:
            out = out[:, : self.out_channels]
        if self.channel_order is not None:
            out = out.index_select(1, self.channel_order)
        return out

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):  # noqa: D401 - torch hook
        # channel_order exists only on transferred modules: create the slot when a checkpoint has it.
        key = prefix + "channel_order"
        if key in state_dict and self.channel_order is None:
            self.channel_order = torch.empty_like(state_dict[key])
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, s={self.s}, d={self.d}, intrinsic={self.intrinsic_channels}, "
                f"ghost={self.ghost_channels}")
