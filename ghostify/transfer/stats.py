"""Least-squares statistics of Eq. 3, accumulated chunk by chunk at sampled positions.

For every pair (candidate intrinsic map i, original map o) the cheap operation is the linear
filter ``phi`` over the cheap kernel's taps of ``H_i`` that best rebuilds ``Z_o`` (the paper's
Table 2 measures exactly this error). Solving it needs only the normal equations:

    G[i]     = sum_r u_ri u_ri^T          (taps x taps, per candidate)
    C[i, o]  = sum_r u_ri z_ro            (taps, per pair)

plus first moments for the intercept. They are summed over chunks of calibration inputs, at a
random sample of output positions (``rows_per_sample`` per input), so neither the unfolded
patches nor the maps of all inputs ever exist at once. Works for 1-, 2- and 3-D maps.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ghostify.transfer.fit import PairFit

__all__ = ["PairStats"]


class PairStats:
    """Accumulates the normal equations for rebuilding each of n maps from each of n candidates."""

    def __init__(self, n: int, kernel: Sequence[int], intercept: bool, rows_per_sample: int,
                 generator: torch.Generator) -> None:
        self.n = n
        self.kernel = tuple(int(k) for k in kernel)
        self.taps = math.prod(self.kernel)
        self.intercept = intercept
        self.rows_per_sample = max(1, int(rows_per_sample))
        self.generator = generator
        dt = torch.float64
        self.G = torch.zeros(n, self.taps, self.taps, dtype=dt)
        # float32: at most max_rows rows are summed, about a reference point; n^2 x taps floats
        self.C = torch.zeros(n * self.taps, n, dtype=torch.float32)
        self.su = torch.zeros(n * self.taps, dtype=dt)
        self.sz = torch.zeros(n, dtype=dt)
        self.zz = torch.zeros(n, dtype=dt)
        self.rows = 0
        # a reference point subtracted before summing: keeps the centred moments well conditioned
        self._u0: torch.Tensor | None = None
        self._z0: torch.Tensor | None = None

    def _positions(self, batch: int, spatial: Sequence[int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(sample index, coordinates per axis) of ``rows_per_sample`` random positions per sample."""
        total = math.prod(spatial)
        per = min(total, self.rows_per_sample)
        if per == total:  # small maps: every position
            flat = torch.arange(total).repeat(batch)
        else:
            flat = torch.randint(0, total, (batch * per,), generator=self.generator)
        b_idx = torch.arange(batch).repeat_interleave(per)
        coords = []
        for size in reversed(spatial):
            coords.append(flat % size)
            flat = flat // size
        return b_idx, coords[::-1]

    def _patches(self, H: torch.Tensor, b_idx: torch.Tensor, coords: list[torch.Tensor]) -> torch.Tensor:
        """(rows, n, taps): the cheap kernel's neighbourhood of every sampled position, zero-padded."""
        pads: list[int] = []
        for k in reversed(self.kernel):
            pads += [k // 2, k // 2]
        Hp = F.pad(H, pads)
        taps = []
        for offset in itertools.product(*(range(k) for k in self.kernel)):
            index = [b_idx, slice(None)] + [c + t for c, t in zip(coords, offset, strict=True)]
            taps.append(Hp[tuple(index)])  # advanced indices around a slice: (rows, n)
        return torch.stack(taps, dim=-1)

    @torch.no_grad()
    def add(self, H: torch.Tensor, Z: torch.Tensor) -> None:
        """Candidates H and targets Z, (batch, n, *spatial) on the same grid, for one chunk."""
        b_idx, coords = self._positions(H.shape[0], H.shape[2:])
        U = self._patches(H.float(), b_idx, coords).reshape(len(b_idx), -1)  # (rows, n * taps)
        Zr = Z.float()[tuple([b_idx, slice(None)] + coords)]  # (rows, n)
        if self._u0 is None:
            self._u0 = U.mean(0) if self.intercept else torch.zeros(U.shape[1])
            self._z0 = Zr.mean(0) if self.intercept else torch.zeros(Zr.shape[1])
        U = U - self._u0
        Zr = Zr - self._z0
        Uv = U.view(-1, self.n, self.taps)
        self.G += torch.einsum("rnt,rnu->ntu", Uv, Uv).double()
        self.C.addmm_(U.T, Zr)
        self.su += U.sum(0).double()
        self.sz += Zr.sum(0).double()
        self.zz += (Zr * Zr).sum(0).double()
        self.rows += U.shape[0]

    def variances(self) -> torch.Tensor:
        """Per target map: the variance about its mean (with an intercept) or its mean square."""
        mu_z = self.sz / self.rows
        zz = self.zz - self.rows * mu_z ** 2 if self.intercept else self.zz
        return (zz / self.rows).clamp_min(0)

    def solve(self, ridge: float = 1e-6) -> PairFit:
        """Every pair's filter, intercept and relative error (in [0, 1]) from the sums so far."""
        n, taps, rows = self.n, self.taps, max(self.rows, 1)
        mu_u = (self.su / rows).view(n, taps)
        mu_z = self.sz / rows
        G, C, zz = self.G.clone(), self.C.view(n, taps, n).double(), self.zz.clone()
        if self.intercept:  # centre: the intercept absorbs the means
            G -= rows * mu_u.unsqueeze(2) * mu_u.unsqueeze(1)
            C -= rows * mu_u.unsqueeze(2) * mu_z.view(1, 1, n)
            zz -= rows * mu_z ** 2
        scale = G.diagonal(dim1=1, dim2=2).mean(-1).clamp_min(1e-12).view(n, 1, 1)
        # inverting n small taps x taps systems, then one batched product: ~20x faster than a
        # batched solve with n right-hand sides each
        phi = torch.linalg.inv(G + ridge * scale * torch.eye(taps, dtype=G.dtype)) @ C  # (n_i, taps, n_o)
        explained = (phi * C).sum(1)
        E = (1.0 - explained / zz.clamp_min(1e-12).view(1, n)).clamp(0.0, 1.0)
        if self.intercept:
            u_mean = mu_u + self._u0.double().view(n, taps)  # back to the data's own means
            z_mean = mu_z + self._z0.double()
            c = z_mean.view(1, n) - torch.einsum("it,ito->io", u_mean, phi)
        else:
            c = torch.zeros(n, n, dtype=torch.float64)
        return PairFit(E=E.float(), phi=phi.permute(0, 2, 1).float(), c=c.float())
