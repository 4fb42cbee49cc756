"""Fitting one Ghost module to the convolution (+ BN + activation) it replaces.

Conventions. The original layer computes ``Z = conv(x)`` (n maps, bias included), then
``Y = act(BN(Z))`` (either may be absent). Candidate intrinsic map i is the original channel
itself, ``H_i = act(BN_i(Z_i))``: the primary convolution keeps the original filter. Ghost map
o is rebuilt as ``u_o = phi * H_i + c`` (a d x d depthwise filter, the paper's cheap linear
operation) so that ``u_o ~ Z_o``; its BN and activation are then channel o's own, so the ghost
ends as ``act(BN_o(u_o)) ~ Y_o``. The intercept c goes where the module can hold it: into the
ghost BN's running mean, or the cheap conv's bias in a module without BN.

Two ways to get ``phi``:

* data-free (weight space): ``phi * H_i`` is a convolution of x with the composite kernel
  ``phi ⊛ W_i`` (size k + (d-1)·stride); fit it to ``W_o`` by least squares, ignoring the
  activation between them (exact for a linear module, approximate otherwise);
* data-aware: least squares on the maps themselves (Table 2 of the paper), over d x d patches
  of ``H_i`` computed on the converted model's own inputs, against the original model's ``Z_o``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ghostify.layers.ghost import GhostModule
from ghostify.layers.surgery import copy_norm_channels
from ghostify.transfer.assign import Assignment

__all__ = ["LayerParts", "PairFit", "weight_space_fit", "data_fit", "apply_fit", "refine",
           "recalibrate_bn", "relative_mse"]


@dataclass
class LayerParts:
    """The original pieces one Ghost module replaces."""

    conv: nn.Conv2d
    norm: nn.BatchNorm2d | None  # the original BN over all n channels (eval statistics)
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


def bn_affine(norm: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
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
    phi: torch.Tensor  # (n, n, d*d): phi[i, o] rebuilds Z_o from H_i
    c: torch.Tensor  # (n, n): the intercept
    gain: torch.Tensor | None = None  # (n, n): shrink factor on the ghost BN's gamma (data-free only)

    def total(self, a: Assignment, weights: torch.Tensor) -> float:
        """Weighted mean error over all channels (intrinsic ones are exact)."""
        err = sum(float(self.E[a.intrinsic[k], o]) * float(weights[o]) for o, (k, _) in a.ghost_of.items())
        return err / max(float(weights.sum()), 1e-12)


# -- data-free ----------------------------------------------------------------------------------

def _dense_kernels(conv: nn.Conv2d) -> torch.Tensor:
    """Filters as (n, c_in, kh', kw') over ALL input channels (zeros outside their group) with
    the dilation spelled out, so filters of different groups are orthogonal."""
    w = conv.weight.detach().double()
    n, cg, kh, kw = w.shape
    dh, dw = conv.dilation
    g = conv.groups
    dense = torch.zeros(n, cg * g, dh * (kh - 1) + 1, dw * (kw - 1) + 1, dtype=w.dtype)
    per = n // g
    for o in range(n):
        grp = o // per
        dense[o, grp * cg:(grp + 1) * cg, ::dh, ::dw] = w[o]
    return dense


def weight_space_fit(parts: LayerParts, d: int) -> PairFit:
    """Fit every pair in weight space: the composite kernel phi ⊛ (a_i W_i) against W_o."""
    conv = parts.conv
    W = _dense_kernels(conv)  # (n, c, kh, kw)
    n, c, kh, kw = W.shape
    sh, sw = conv.stride
    r = d // 2
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
    # The composite kernel of tap t is a_i W_i shifted by t (times the primary conv's stride), so
    # the normal equations need only correlations of filters at those shifts: convolutions, never
    # the (n, d*d, c, K, K) stack of shifted filters.
    As = W * a.view(n, 1, 1, 1)
    # C[i, t, o] = <shift_t(a_i W_i), W_o placed at the centre tap>
    C = F.conv2d(F.pad(W, (r * sw, r * sw, r * sh, r * sh)), As, stride=(sh, sw))  # (o, i, d, d)
    C = C.permute(1, 2, 3, 0).reshape(n, d * d, n)
    # G[i, t, t'] = <shift_t(a_i W_i), shift_t'(a_i W_i)>: the autocorrelation of a_i W_i at t' - t
    pad = (d - 1)
    auto = F.conv2d(F.pad(As, (pad * sw, pad * sw, pad * sh, pad * sh)).reshape(1, n * c, kh + 2 * pad * sh,
                                                                               kw + 2 * pad * sw),
                    As, stride=(sh, sw), groups=n)[0]  # (n, 2d-1, 2d-1)
    tu = torch.arange(d * d) // d
    tv = torch.arange(d * d) % d
    G = auto[:, (tu.view(1, -1) - tu.view(-1, 1)) + pad, (tv.view(1, -1) - tv.view(-1, 1)) + pad]  # (n, d2, d2)
    ridge = 1e-8 * G.diagonal(dim1=1, dim2=2).sum(-1).clamp_min(1e-30).view(n, 1, 1)
    phi = torch.linalg.solve(G + ridge * torch.eye(d * d, dtype=G.dtype), C)  # (n, d2, n)
    tt = (W.reshape(n, -1) ** 2).sum(1).clamp_min(1e-30)  # (n,)
    explained = (phi * C).sum(1)  # (n_i, n_o)
    E = (1.0 - explained / tt.view(1, n)).clamp(0.0, 1.0)
    # the intercept: H_i ~ a_i W_i x + b_i, so phi * H_i ~ W_o x + b_i sum(phi); the target has bias_o
    c_int = bias.view(1, n) - b.view(n, 1) * phi.sum(1)
    if mean_h is not None:
        # with BN statistics, set the mean from them instead: the ghost BN then centres u = phi * H_i
        # at E[u] = sum(phi) E[H_i], whatever the mismatch of the composite kernel does to the mean
        mu_o = parts.norm.running_mean.detach().double().cpu()  # type: ignore[union-attr]
        c_int = mu_o.view(1, n) - phi.sum(1) * mean_h.view(n, 1)
    if parts.act is not None and not isinstance(parts.act, nn.Identity):
        # an activation between them (ReLU) cannot turn a map into its negative: such pairs fail
        corr = torch.einsum("ip,op->io", (W * a.view(n, 1, 1, 1)).reshape(n, -1),
                            (W * a.view(n, 1, 1, 1)).reshape(n, -1))
        E = torch.where(corr < 0, torch.ones_like(E), E)
    # a map that is almost always cut off by the activation carries little to rebuild from
    E = torch.where(kappa.view(n, 1).abs() < 0.05, torch.ones_like(E), E)
    # The fit assumed white inputs; real ones are not, so the ghost is less correlated with its
    # target than the filters suggest: shrink it toward the channel's mean by its (weight-space)
    # correlation, the least-squares scaling for a predictor that good.
    gain = (1.0 - E).clamp_min(0.0).sqrt() if parts.norm is not None else None
    return PairFit(E=E.float(), phi=phi.permute(0, 2, 1).float(), c=c_int.float(),
                   gain=None if gain is None else gain.float())


def _gaussian_linearization(act: nn.Module, norm: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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


# -- data-aware ---------------------------------------------------------------------------------

def data_fit(H: torch.Tensor, Z: torch.Tensor, d: int, intercept: bool, chunk: int = 16) -> PairFit:
    """Least squares of every target map Z_o on the d x d patches of every candidate map H_i.

    H, Z: (N, n, h, w) on the same grid. Sums are accumulated over image chunks so the patch
    matrix never exists whole.
    """
    N, n, h, w = H.shape
    d2 = d * d
    dt = torch.float64
    G = torch.zeros(n, d2, d2, dtype=dt)
    C = torch.zeros(n * d2, n, dtype=dt)
    su = torch.zeros(n * d2, dtype=dt)
    sz = torch.zeros(n, dtype=dt)
    zz = torch.zeros(n, dtype=dt)
    rows = 0
    for start in range(0, N, chunk):
        h_c = H[start:start + chunk].to(dt)
        z_c = Z[start:start + chunk].to(dt)
        U = F.unfold(h_c, d, padding=d // 2)  # (b, n*d2, hw)
        U = U.transpose(1, 2).reshape(-1, n * d2)
        Zr = z_c.permute(0, 2, 3, 1).reshape(-1, n)
        Uv = U.view(-1, n, d2)
        G += torch.einsum("rnt,rnu->ntu", Uv, Uv)
        C += U.T @ Zr
        su += U.sum(0)
        sz += Zr.sum(0)
        zz += (Zr ** 2).sum(0)
        rows += U.shape[0]
    C = C.view(n, d2, n)
    mu_u = (su / rows).view(n, d2)
    mu_z = sz / rows
    if intercept:  # centre: the intercept absorbs the means
        G = G - rows * mu_u.unsqueeze(2) * mu_u.unsqueeze(1)
        C = C - rows * mu_u.unsqueeze(2) * mu_z.view(1, 1, n)
        zz = zz - rows * mu_z ** 2
    ridge = 1e-6 * G.diagonal(dim1=1, dim2=2).mean(-1).clamp_min(1e-12).view(n, 1, 1)
    phi = torch.linalg.solve(G + ridge * torch.eye(d2, dtype=dt), C)  # (n, d2, n)
    explained = (phi * C).sum(1)
    E = (1.0 - explained / zz.clamp_min(1e-12).view(1, n)).clamp(0.0, 1.0)
    if intercept:
        c_int = mu_z.view(1, n) - torch.einsum("it,ito->io", mu_u, phi)
    else:
        c_int = torch.zeros(n, n, dtype=dt)
    return PairFit(E=E.float(), phi=phi.permute(0, 2, 1).float(), c=c_int.float())


# -- writing the fit into the module ------------------------------------------------------------

def _norm_of(seq: nn.Sequential) -> nn.BatchNorm2d | None:
    return seq[1] if isinstance(seq[1], nn.BatchNorm2d) else None


def intercept_slot(ghost: GhostModule) -> bool:
    """Whether the cheap branch can hold a per-map constant (its BN, or a bias on the cheap conv)."""
    if ghost.cheap_operation is None:
        return False
    return _norm_of(ghost.cheap_operation) is not None or ghost.cheap_operation[0].bias is not None


@torch.no_grad()
def apply_fit(ghost: GhostModule, parts: LayerParts, a: Assignment, fit: PairFit | None) -> None:
    """Primary = the chosen original filters (and their BN channels); cheap = the fitted filters;
    ghost BN = the BN of the channel it stands for; channel_order restores the original order."""
    conv, n, m, d = parts.conv, ghost.out_channels, ghost.intrinsic_channels, ghost.d
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
        copy_norm_channels(pnorm, parts.norm, list(range(m)), a.intrinsic)
    if ghost.cheap_operation is None:  # s = 1: the original filters in their order, no permutation
        return
    cheap = ghost.cheap_operation[0]
    cnorm = _norm_of(ghost.cheap_operation)
    cheap.weight.zero_()
    if cheap.bias is not None:
        cheap.bias.zero_()
    slots, sources = [], []
    for o, (k, q) in a.ghost_of.items():
        i = a.intrinsic[k]
        cheap.weight[q, 0] = fit.phi[i, o].view(d, d).to(cheap.weight)
        slots.append(q)
        sources.append(o)
        if cnorm is None and cheap.bias is not None:
            cheap.bias[q] = fit.c[i, o]
    if cnorm is not None and parts.norm is not None:
        copy_norm_channels(cnorm, parts.norm, slots, sources)
        for o, (k, q) in a.ghost_of.items():
            # the module computes phi * H without c: BN(phi * H) with mean mu_o - c is BN_o(phi * H + c)
            cnorm.running_mean[q] -= fit.c[a.intrinsic[k], o].to(cnorm.running_mean)
        if fit.gain is not None and cnorm.affine:
            gain = torch.stack([fit.gain[a.intrinsic[k], o] for o, (k, _) in a.ghost_of.items()])
            q_idx = torch.tensor([q for _, (_, q) in a.ghost_of.items()])
            gamma = cnorm.weight[q_idx].detach().double().cpu()
            beta = cnorm.bias[q_idx].detach().double().cpu()
            cnorm.weight[q_idx] = (gamma * gain.double()).to(cnorm.weight)
            if parts.act is not None:  # shrinking moves E[act(.)]: put the mean after the activation back
                cnorm.bias[q_idx] = _match_act_mean(parts.act, beta, gamma.abs(), gain.double()).to(cnorm.bias)
    ghost.channel_order = a.channel_order(n, m).to(conv.weight.device)



# -- refinement on the local reconstruction error -----------------------------------------------

def relative_mse(pred: torch.Tensor, target: torch.Tensor) -> float:
    """sum (pred - target)^2 / sum (target - per-channel mean)^2: 0 is exact, 1 is as bad as
    predicting each map's mean."""
    centred = target - target.mean(dim=(0, 2, 3), keepdim=True)
    return float(((pred - target) ** 2).sum() / centred.pow(2).sum().clamp_min(1e-12))


@torch.no_grad()
def _predict(ghost: nn.Module, X: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    return torch.cat([ghost(X[i:i + chunk]) for i in range(0, X.shape[0], chunk)])


def refine(ghost: GhostModule, X: torch.Tensor, T: torch.Tensor, steps: int, lr: float = 1e-3,
           batch_size: int = 32, seed: int = 0) -> tuple[float, float]:
    """Adam on primary and cheap filters (and BN affine) jointly, loss = local relative MSE.

    BN statistics stay frozen (eval mode) during the fit; recalibrate_bn re-estimates them
    afterwards. Keeps the result only if it lowers the error on the whole calibration set.
    Returns (error before, error after).
    """
    ghost.eval()
    before = relative_mse(_predict(ghost, X), T)
    if steps <= 0:
        return before, before
    saved = {k: v.detach().clone() for k, v in ghost.state_dict().items()}
    params = [p for p in ghost.parameters() if p.is_floating_point()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    gen = torch.Generator().manual_seed(seed)
    scale = (T - T.mean(dim=(0, 2, 3), keepdim=True)).pow(2).mean().clamp_min(1e-12)
    N = X.shape[0]
    try:
        with torch.enable_grad():
            for _ in range(steps):
                idx = torch.randint(0, N, (min(batch_size, N),), generator=gen)
                loss = F.mse_loss(ghost(X[idx]), T[idx]) / scale
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    finally:
        for p, f in zip(params, flags, strict=True):
            p.requires_grad_(f)
    after = relative_mse(_predict(ghost, X), T)
    if not math.isfinite(after) or after > before:
        ghost.load_state_dict(saved)
        after = before
    return before, after


@torch.no_grad()
def recalibrate_bn(ghost: GhostModule, X: torch.Tensor, chunk: int = 64) -> None:
    """Re-estimate the BN statistics inside the module on X, re-folding gamma/beta so that the
    eval-mode function is unchanged: training-mode BN (batch statistics) then computes what
    eval mode does, so fine-tuning starts from the transferred function."""
    norms = [s[1] for s in (ghost.primary_conv, ghost.cheap_operation)
             if s is not None and isinstance(s[1], nn.BatchNorm2d) and s[1].running_mean is not None]
    if not norms:
        return
    stats: dict[int, list[torch.Tensor]] = {id(bn): [] for bn in norms}

    def hook(mod: nn.Module, inp: tuple) -> None:
        x = inp[0].double()
        stats[id(mod)].append(torch.stack([x.sum((0, 2, 3)), (x * x).sum((0, 2, 3)),
                                           torch.full_like(x[0, :, 0, 0], x.numel() / x.shape[1])]))

    handles = [bn.register_forward_pre_hook(hook) for bn in norms]
    try:
        ghost.eval()
        _predict(ghost, X, chunk)
    finally:
        for h in handles:
            h.remove()
    for bn in norms:
        s1, s2, cnt = torch.stack(stats[id(bn)]).sum(0)
        mean = s1 / cnt
        var = ((s2 - cnt * mean ** 2) / (cnt - 1).clamp_min(1)).clamp_min(0)
        old_mean, old_var = bn.running_mean.double(), bn.running_var.double()
        if bn.affine:
            gamma, beta = bn.weight.double(), bn.bias.double()
            inv_old = torch.rsqrt(old_var + bn.eps)
            new_gamma = gamma * inv_old * torch.sqrt(var + bn.eps)
            bn.bias.copy_((beta + gamma * inv_old * (mean - old_mean)).to(bn.bias))
            bn.weight.copy_(new_gamma.to(bn.weight))
            bn.running_mean.copy_(mean.to(bn.running_mean))
            bn.running_var.copy_(var.to(bn.running_var))
