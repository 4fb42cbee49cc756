"""Writing a fit into a Ghost module, and re-estimating its BatchNorm statistics on calibration data.

``apply_fit``: the primary convolution keeps the chosen original filters (and their BN
channels); the cheap operation gets the fitted filters; each ghost's BN is the BN of the
channel it stands for (its running mean absorbs the fit's intercept); ``channel_order`` puts the
module's outputs back in the original order, so downstream layers keep their weights.

``NormStatistics``: the BN statistics inside the module, re-estimated while calibration chunks
stream through it, then folded into gamma/beta so the eval-mode function is unchanged:
training-mode BN (batch statistics) then computes what eval mode does, so fine-tuning starts
from the transferred function.
"""

from __future__ import annotations

import torch
from torch import nn

from ghostify.layers.ghost import GhostModule
from ghostify.layers.surgery import NORM_TYPES, copy_norm_channels
from ghostify.transfer.assign import Assignment
from ghostify.transfer.fit import LayerParts, PairFit, _match_act_mean
from ghostify.utils import channel_sums

__all__ = ["apply_fit", "intercept_slot", "NormStatistics", "identity_assignment"]

_NORMS = tuple(NORM_TYPES.values())


def _norm_of(seq: nn.Sequential) -> nn.Module | None:
    return seq[1] if isinstance(seq[1], _NORMS) else None


def intercept_slot(ghost: GhostModule) -> bool:
    """Whether the cheap branch can hold a per-map constant (its BN, or a bias on the cheap conv)."""
    if ghost.cheap_operation is None:
        return False
    return _norm_of(ghost.cheap_operation) is not None or ghost.cheap_operation[0].bias is not None


def identity_assignment(n: int) -> Assignment:
    """s = 1: every original filter stays, in its order."""
    return Assignment(intrinsic=list(range(n)), ghost_of={})


@torch.no_grad()
def _copy_primary(ghost: GhostModule, parts: LayerParts, a: Assignment) -> None:
    conv, n = parts.conv, ghost.n
    idx = torch.tensor(a.intrinsic, dtype=torch.long)
    primary = ghost.primary_conv[0]
    for name, p in conv.named_parameters(recurse=False):
        if p.dim() >= 1 and p.shape[0] == n:
            getattr(primary, name).copy_(p.detach()[idx])
    for name, buf in conv.named_buffers(recurse=False):
        if buf is not None and buf.dim() >= 1 and buf.shape[0] == n and getattr(primary, name, None) is not None:
            getattr(primary, name).copy_(buf[idx])
    pnorm = _norm_of(ghost.primary_conv)
    if pnorm is not None and parts.norm is not None:
        copy_norm_channels(pnorm, parts.norm, list(range(ghost.m)), a.intrinsic)


@torch.no_grad()
def _shrink(cnorm: nn.Module, parts: LayerParts, a: Assignment, fit: PairFit, q: torch.Tensor) -> None:
    """Data-free fits shrink each ghost toward its channel mean (see ``weight_space_fit``)."""
    src = torch.tensor([a.intrinsic[k] for _, (k, _) in a.ghost_of.items()])
    gain = fit.gain[src, torch.tensor(list(a.ghost_of))].double()
    gamma = cnorm.weight[q].detach().double().cpu()
    beta = cnorm.bias[q].detach().double().cpu()
    cnorm.weight[q] = (gamma * gain).to(cnorm.weight)
    if parts.act is not None:  # shrinking moves E[act(.)]: put the mean after the activation back
        cnorm.bias[q] = _match_act_mean(parts.act, beta, gamma.abs(), gain).to(cnorm.bias)


@torch.no_grad()
def apply_fit(ghost: GhostModule, parts: LayerParts, a: Assignment, fit: PairFit | None) -> None:
    """Write assignment ``a`` and fit ``fit`` into ``ghost`` (see the module docstring)."""
    _copy_primary(ghost, parts, a)
    if ghost.cheap_operation is None:  # s = 1: the original filters in their order, no permutation
        return
    cheap = ghost.cheap_operation[0]
    cnorm = _norm_of(ghost.cheap_operation)
    cheap.weight.zero_()
    if cheap.bias is not None:
        cheap.bias.zero_()
    ghosts = list(a.ghost_of)
    src = torch.tensor([a.intrinsic[k] for _, (k, _) in a.ghost_of.items()], dtype=torch.long)
    dst = torch.tensor(ghosts, dtype=torch.long)
    q = torch.tensor([slot for _, (_, slot) in a.ghost_of.items()], dtype=torch.long)
    if len(ghosts):
        cheap.weight[q, 0] = fit.phi[src, dst].view(len(ghosts), *cheap.kernel_size).to(cheap.weight)
        intercept = fit.c[src, dst]
        if cnorm is None and cheap.bias is not None:
            cheap.bias[q] = intercept.to(cheap.bias)
        if cnorm is not None and parts.norm is not None:
            copy_norm_channels(cnorm, parts.norm, q.tolist(), ghosts)
            # the module computes phi * H without c: BN(phi * H) with mean mu_o - c is BN_o(phi * H + c)
            cnorm.running_mean[q] -= intercept.to(cnorm.running_mean)
            if fit.gain is not None and cnorm.affine:
                _shrink(cnorm, parts, a, fit, q)
    ghost.channel_order = a.channel_order(ghost.n, ghost.m).to(parts.conv.weight.device)


class NormStatistics:
    """Sums of the BN inputs inside one Ghost module over calibration chunks; :meth:`refold` applies them."""

    def __init__(self, ghost: GhostModule) -> None:
        self.norms = [s[1] for s in (ghost.primary_conv, ghost.cheap_operation)
                      if s is not None and isinstance(s[1], _NORMS) and s[1].running_mean is not None]
        self.sums: dict[int, torch.Tensor] = {}
        self.handles = [bn.register_forward_pre_hook(self._hook) for bn in self.norms]

    def _hook(self, mod: nn.Module, inp: tuple) -> None:
        x = inp[0].detach()
        s1, s2 = channel_sums(x)
        stats = torch.stack([s1, s2, torch.full_like(s1, x.numel() / x.shape[1])])
        self.sums[id(mod)] = self.sums.get(id(mod), 0) + stats

    @torch.no_grad()
    def refold(self) -> None:
        """New running statistics, with gamma/beta re-folded so the eval-mode output is unchanged."""
        self.close()
        for bn in self.norms:
            if id(bn) not in self.sums:
                continue
            s1, s2, cnt = self.sums[id(bn)]
            mean = s1 / cnt
            var = ((s2 - cnt * mean ** 2) / (cnt - 1).clamp_min(1)).clamp_min(0)
            old_mean, old_var = bn.running_mean.double(), bn.running_var.double()
            if bn.affine:
                gamma, beta = bn.weight.double(), bn.bias.double()
                inv_old = torch.rsqrt(old_var + bn.eps)
                bn.bias.copy_((beta + gamma * inv_old * (mean - old_mean)).to(bn.bias))
                bn.weight.copy_((gamma * inv_old * torch.sqrt(var + bn.eps)).to(bn.weight))
                bn.running_mean.copy_(mean.to(bn.running_mean))
                bn.running_var.copy_(var.to(bn.running_var))

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []
