"""Fitting one Ghost module to the convolution (+ BN + activation) it replaces.

Conventions. The original layer computes ``Z = conv(x)`` (n maps, bias included), then
``Y = act(BN(Z))`` (either may be absent). Candidate intrinsic map i is the original channel
itself, ``H_i = act(BN_i(Z_i))``: the primary convolution keeps the original filter. Ghost map
o is rebuilt as ``u_o = phi * H_i + c`` (a d x d depthwise filter, the paper's cheap linear
operation) so that ``u_o ~ Z_o``; its BN and activation are then channel o's own, so the ghost
ends as ``act(BN_o(u_o)) ~ Y_o``. The intercept c goes where the module can hold it: into the
ghost BN's running mean, or the cheap conv's bias in a module without BN.

Two ways to get ``phi``:

* data-free (weight space, here): ``phi * H_i`` is a convolution of x with the composite kernel
  ``phi ⊛ W_i`` (size k + (d-1)·stride); fit it to ``W_o`` by least squares, ignoring the
  activation between them (exact for a linear module, approximate otherwise);
* data-aware (:mod:`ghostify.transfer.stats`): least squares on the maps themselves (Table 2 of
  the paper), over the cheap kernel's patches of ``H_i`` computed on the converted model's own
  inputs, against the original model's ``Z_o``.

Everything here works for 1-, 2- and 3-D convolutions; "d x d" reads "the cheap kernel".
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ghostify.transfer.assign import Assignment
from ghostify.utils import channel_sums

__all__ = ["LayerParts", "PairFit", "bn_affine", "weight_space_fit", "relative_mse", "ErrorMeter"]

MAX_POSITIONS = 1024  # per map, for measuring a layer's error

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


@dataclass
class LayerParts:
    """The original pieces one Ghost module replaces."""

    conv: nn.Module  # a 1-, 2- or 3-D convolution
    norm: nn.Module | None  # the original BatchNorm over all n channels (eval statistics)
    act: nn.Module | None

    def pre_act_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, b) with BN(conv(x)) = a * (W * x) + b per channel (bias of the conv included)."""
        n = self.conv.out_channels
        w = self.conv.weight
        bias = self.conv.bias.detach() if self.conv.bias is not None else torch.zeros(n, dtype=w.dtype,
                                                                                      device=w.device)
        if self.norm is None:
            return torch.ones_like(bias), bias
        a, shift = bn_affine(self.norm)
        return a, a * bias + shift

    def after_conv(self, z: torch.Tensor) -> torch.Tensor:
        """act(BN(z)) with the original modules (eval mode)."""
        if self.norm is not None:
            z = self.norm(z)
        if self.act is not None:
            z = self.act(z)
        return z


def bn_affine(norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BN as y = a * x + b."""
    var = norm.running_var.detach() if norm.running_var is not None else torch.ones(norm.num_features)
    mean = norm.running_mean.detach() if norm.running_mean is not None else torch.zeros(norm.num_features)
    inv = torch.rsqrt(var + norm.eps)
    gamma = norm.weight.detach() if norm.weight is not None else torch.ones_like(var)
    beta = norm.bias.detach() if norm.bias is not None else torch.zeros_like(var)
    return gamma * inv, beta - gamma * inv * mean


@dataclass
class PairFit:
    """For every (intrinsic candidate i, original channel o): error, cheap filter, intercept."""

    E: torch.Tensor  # (n, n) relative error in [0, 1]
    phi: torch.Tensor  # (n, n, taps): phi[i, o] rebuilds Z_o from H_i
    c: torch.Tensor  # (n, n): the intercept
    gain: torch.Tensor | None = None  # (n, n): shrink factor on the ghost BN's gamma (data-free only)

    def total(self, a: Assignment, weights: torch.Tensor) -> float:
        """Weighted mean error over all channels (intrinsic ones are exact)."""
        err = sum(float(self.E[a.intrinsic[k], o]) * float(weights[o]) for o, (k, _) in a.ghost_of.items())
        return err / max(float(weights.sum()), 1e-12)


# -- data-free ----------------------------------------------------------------------------------

def _dense_kernels(conv: nn.Module) -> torch.Tensor:
    """Filters as (n, c_in, *k') over ALL input channels (zeros outside their group) with the
    dilation spelled out, so filters of different groups are orthogonal."""
    w = conv.weight.detach().double()
    n, cg, *k = w.shape
    dilation = conv.dilation
    g = conv.groups
    dense = torch.zeros(n, cg * g, *[dl * (kk - 1) + 1 for dl, kk in zip(dilation, k, strict=True)], dtype=w.dtype)
    per = n // g
    strided = tuple(slice(None, None, dl) for dl in dilation)
    for o in range(n):
        grp = o // per
        dense[(o, slice(grp * cg, (grp + 1) * cg), *strided)] = w[o]
    return dense


def _pads(amounts: list[int]) -> list[int]:
    """F.pad's argument for symmetric padding, last axis first."""
    out: list[int] = []
    for a in reversed(amounts):
        out += [a, a]
    return out


def _filter_correlations(W: torch.Tensor, As: torch.Tensor, kernel: tuple[int, ...],
                         stride: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight-space normal equations of every pair, by convolutions of the filters.

    The composite kernel of tap t is ``a_i W_i`` shifted by t (times the primary conv's stride),
    so the sums need only correlations of filters at those shifts, never the stack of shifted
    filters: C[i, t, o] = <shift_t(a_i W_i), W_o> and G[i, t, t'] = the autocorrelation of
    ``a_i W_i`` at t' - t.
    """
    n, c, *size = W.shape
    dims, taps = len(kernel), math.prod(kernel)
    conv = _CONV[dims]
    C = conv(F.pad(W, _pads([(k // 2) * s for k, s in zip(kernel, stride, strict=True)])), As, stride=stride)
    C = C.permute(1, *range(2, 2 + dims), 0).reshape(n, taps, n)  # (i, t, o)
    reach = [(k - 1) * s for k, s in zip(kernel, stride, strict=True)]
    padded = F.pad(As, _pads(reach))
    auto = conv(padded.reshape(1, n * c, *padded.shape[2:]), As, stride=stride, groups=n)[0]  # (n, *(2k-1))
    offsets = torch.tensor(list(itertools.product(*(range(k) for k in kernel))))  # (taps, dims)
    diff = offsets.view(1, taps, dims) - offsets.view(taps, 1, dims) + torch.tensor([k - 1 for k in kernel])
    G = auto[(slice(None), *[diff[..., a] for a in range(dims)])]  # (n, taps, taps)
    return C, G


def weight_space_fit(parts: LayerParts, kernel: tuple[int, ...]) -> PairFit:
    """Fit every pair in weight space: the composite kernel phi ⊛ (a_i W_i) against W_o."""
    conv = parts.conv
    W = _dense_kernels(conv)  # (n, c, *k)
    n = W.shape[0]
    shape = (n,) + (1,) * (W.dim() - 1)
    a, b = (t.double().cpu() for t in parts.pre_act_affine())
    bias = conv.bias.detach().double().cpu() if conv.bias is not None else torch.zeros(n, dtype=torch.double)
    kappa = torch.ones(n, dtype=torch.double)
    mean_h = None  # E[H_i] on the training data, known from the BN statistics
    if parts.norm is not None:
        mean_h = parts.norm.bias.detach().double().cpu() if parts.norm.affine else torch.zeros(n, dtype=torch.double)
    if parts.act is not None and parts.norm is not None:
        # the map the ghost reads is act(z_i); BN says z_i ~ N(beta_i, gamma_i^2) on the training
        # data, so linearize the activation there: act(z) ~ kappa z + nu (least squares under that law)
        kappa, nu, mean_h = _gaussian_linearization(parts.act, parts.norm)
        a, b = a * kappa, b * kappa + nu
    As = W * a.view(shape)
    C, G = _filter_correlations(W, As, tuple(kernel), tuple(conv.stride))
    taps = C.shape[1]
    ridge = 1e-8 * G.diagonal(dim1=1, dim2=2).sum(-1).clamp_min(1e-30).view(n, 1, 1)
    phi = torch.linalg.inv(G + ridge * torch.eye(taps, dtype=G.dtype)) @ C  # (n, taps, n): see stats.solve
    tt = (W.reshape(n, -1) ** 2).sum(1).clamp_min(1e-30)  # (n,)
    E = (1.0 - (phi * C).sum(1) / tt.view(1, n)).clamp(0.0, 1.0)
    # the intercept: H_i ~ a_i W_i x + b_i, so phi * H_i ~ W_o x + b_i sum(phi); the target has bias_o
    c_int = bias.view(1, n) - b.view(n, 1) * phi.sum(1)
    if mean_h is not None:
        # with BN statistics, set the mean from them instead: the ghost BN then centres u = phi * H_i
        # at E[u] = sum(phi) E[H_i], whatever the mismatch of the composite kernel does to the mean
        mu_o = parts.norm.running_mean.detach().double().cpu()  # type: ignore[union-attr]
        c_int = mu_o.view(1, n) - phi.sum(1) * mean_h.view(n, 1)
    if parts.act is not None and not isinstance(parts.act, nn.Identity):
        # an activation between them (ReLU) cannot turn a map into its negative: such pairs fail
        flat = As.reshape(n, -1)
        E = torch.where(flat @ flat.T < 0, torch.ones_like(E), E)
    # a map that is almost always cut off by the activation carries little to rebuild from
    E = torch.where(kappa.view(n, 1).abs() < 0.05, torch.ones_like(E), E)
    # The fit assumed white inputs; real ones are not, so the ghost is less correlated with its
    # target than the filters suggest: shrink it toward the channel's mean by its (weight-space)
    # correlation, the least-squares scaling for a predictor that good.
    gain = (1.0 - E).clamp_min(0.0).sqrt() if parts.norm is not None else None
    return PairFit(E=E.float(), phi=phi.permute(0, 2, 1).float(), c=c_int.float(),
                   gain=None if gain is None else gain.float())


def _gaussian_linearization(act: nn.Module, norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per channel (kappa, nu) minimizing E[(act(z) - kappa z - nu)^2] for z ~ N(beta, gamma^2), and E[act(z)]."""
    import numpy as np

    pts, wts = np.polynomial.hermite_e.hermegauss(48)  # Gauss-Hermite nodes for a standard normal
    pts_t = torch.tensor(pts, dtype=torch.double)
    w_t = torch.tensor(wts / wts.sum(), dtype=torch.double)
    n = norm.num_features
    mu = norm.bias.detach().double().cpu() if norm.affine else torch.zeros(n, dtype=torch.double)
    sd = norm.weight.detach().double().cpu().abs() if norm.affine else torch.ones(n, dtype=torch.double)
    sd = sd.clamp_min(1e-8)
    z = mu.view(n, 1) + sd.view(n, 1) * pts_t.view(1, -1)
    with torch.no_grad():
        fz = act.double()(z.clone()) if hasattr(act, "double") else act(z.clone())
    act.float()
    mean_f = (fz * w_t).sum(1)
    cov = ((fz - mean_f.view(n, 1)) * (z - mu.view(n, 1)) * w_t).sum(1)
    kappa = cov / sd ** 2
    return kappa, mean_f - kappa * mu, mean_f


def _match_act_mean(act: nn.Module, beta: torch.Tensor, sd: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """beta' with E[act(beta' + gain sd xi)] = E[act(beta + sd xi)], xi ~ N(0, 1) (bisection)."""
    import numpy as np

    pts, wts = np.polynomial.hermite_e.hermegauss(48)
    xi = torch.tensor(pts, dtype=torch.double).view(1, -1)
    w = torch.tensor(wts / wts.sum(), dtype=torch.double).view(1, -1)

    def mean_act(b: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return (act(b.view(-1, 1).float() + s.view(-1, 1).float() * xi.float()).double() * w).sum(1)

    target = mean_act(beta, sd)
    lo, hi = beta - 6 * sd - 1, beta + 6 * sd + 1
    for _ in range(50):
        mid = (lo + hi) / 2
        below = mean_act(mid, gain * sd) < target
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    out = (lo + hi) / 2
    ok = (mean_act(out, gain * sd) - target).abs() < 1e-3 * (1 + target.abs())
    return torch.where(ok, out, beta)  # a non-monotone activation without a solution keeps beta


def relative_mse(pred: torch.Tensor, target: torch.Tensor) -> float:
    """sum (pred - target)^2 / sum (target - per-channel mean)^2: 0 is exact, 1 is as bad as
    predicting each map's mean."""
    dims = [0] + list(range(2, target.dim()))
    centred = target - target.mean(dim=dims, keepdim=True)
    return float(((pred - target) ** 2).sum() / centred.pow(2).sum().clamp_min(1e-12))


@dataclass
class ErrorMeter:
    """Relative MSE over a stream: sum (y - t)^2 / sum (t - per-channel mean of t)^2."""

    sq: float = 0.0
    s1: torch.Tensor | None = None
    s2: torch.Tensor | None = None
    count: float = 0.0

    def add(self, y: torch.Tensor, t: torch.Tensor) -> None:
        if t.dim() > 2 and t[0, 0].numel() > MAX_POSITIONS:  # a regular grid of positions estimates it as well
            step = max(1, round((t[0, 0].numel() / MAX_POSITIONS) ** (1 / (t.dim() - 2))))
            index = (slice(None), slice(None), *[slice(None, None, step)] * (t.dim() - 2))
            y, t = y[index], t[index]
        diff = y - t
        self.sq += float(channel_sums(diff.reshape(diff.shape[0], diff.shape[1], -1))[1].sum())
        s1, s2 = channel_sums(t.reshape(t.shape[0], t.shape[1], -1))
        self.s1 = s1 if self.s1 is None else self.s1 + s1
        self.s2 = s2 if self.s2 is None else self.s2 + s2
        self.count += t.numel() / t.shape[1]

    @property
    def value(self) -> float:
        if self.s1 is None:
            return float("nan")
        centred = float((self.s2 - self.s1 ** 2 / max(self.count, 1.0)).sum())
        return self.sq / max(centred, 1e-12)
