"""An optional refinement after the closed-form fit: Adam on the module's local reconstruction error.

The closed form fits each ghost's cheap filter to its target with the primary filters fixed;
refining primary and cheap filters (and BN affine) jointly lowers the module's error much
further (docs/transfer.md: on the Fashion-MNIST bench, 58 % zero-shot without it, 86 % with it).
It costs forward and backward passes of the module, so it runs under a step budget and a time
budget, on a pool of calibration samples, and on spatial crops of large maps: a convolution is
translation-equivariant, so an interior crop of its input gives exactly that crop of its output
(computed with the module's padding switched off), at a fraction of the cost. A layer keeps the
refinement only where it lowers the error on the pool.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ghostify.layers.ghost import GhostModule
from ghostify.transfer.config import TransferConfig
from ghostify.transfer.fit import ErrorMeter

__all__ = ["RefinePool", "refine"]


class RefinePool:
    """Calibration samples (module inputs and targets) kept for one layer's refinement, in float16."""

    def __init__(self, ghost: GhostModule, limit: int, crop: int, generator: torch.Generator) -> None:
        self.ghost, self.limit, self.crop, self.generator = ghost, limit, crop, generator
        self.xs: list[torch.Tensor] = []
        self.ts: list[torch.Tensor] = []
        self.count = 0
        self.window = _crop_window(ghost, crop)
        self.cropped = False

    def add(self, x: torch.Tensor, t: torch.Tensor) -> None:
        """Keep (a crop of) each sample until ``limit`` samples are held."""
        take = min(x.shape[0], self.limit - self.count)
        if take <= 0:
            return
        x, t = x[:take], t[:take]
        if self.window is not None and (self.cropped or not self.xs) and _fits(self.window, x, t):
            x, t = self._cropped(x, t)
            self.cropped = True
        self.xs.append(x.detach().to(torch.float16).cpu())
        self.ts.append(t.detach().to(torch.float16).cpu())
        self.count += take

    def _cropped(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A random interior window of ``length`` outputs per axis, and exactly the inputs it reads."""
        stride, pad, reach, margin, length = self.window
        starts = [int(torch.randint(m, size - m - length + 1, (1,), generator=self.generator))
                  for size, m in zip(t.shape[2:], margin, strict=True)]
        xp = F.pad(x, [p for q in reversed(pad) for p in (q, q)])  # the module's own zero padding, done here
        xs = tuple(slice((o - m) * s, (o - m) * s + (length - 1 + 2 * m) * s + r)
                   for o, s, r, m in zip(starts, stride, reach, margin, strict=True))
        ts = tuple(slice(o, o + length) for o in starts)
        return xp[(slice(None), slice(None), *xs)], t[(slice(None), slice(None), *ts)]

    def batches(self, size: int, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Endless random mini-batches over the whole pool."""
        x, t = torch.cat(self.xs), torch.cat(self.ts)
        while True:
            idx = torch.randint(0, x.shape[0], (min(size, x.shape[0]),), generator=self.generator)
            yield x[idx].to(device).float(), t[idx].to(device).float()


def _crop_window(ghost: GhostModule, crop: int) -> tuple | None:
    """(stride, padding, reach, margin, length) for exact crops, or None when crops would not be exact."""
    conv = ghost.primary_conv[0]
    if crop <= 0 or type(conv) not in (nn.Conv1d, nn.Conv2d, nn.Conv3d) or conv.padding_mode != "zeros" \
            or isinstance(conv.padding, str) or ghost.cheap_operation is None:
        return None
    margin = tuple(k // 2 for k in ghost.cheap_operation[0].kernel_size)  # how far the cheap operation reads
    reach = tuple(d * (k - 1) + 1 for d, k in zip(conv.dilation, conv.kernel_size, strict=True))
    return tuple(conv.stride), tuple(conv.padding), reach, margin, crop


def _fits(window: tuple, x: torch.Tensor, t: torch.Tensor) -> bool:
    """Crop only maps at least twice the window: on small maps a crop saves little and sees less."""
    _, _, _, margin, length = window
    return all(size >= 2 * length + 2 * m for size, m in zip(t.shape[2:], margin, strict=True))


@contextlib.contextmanager
def _valid_padding(ghost: GhostModule) -> Iterator[None]:
    """The module with its convolutions' padding off: an input crop gives the matching output crop."""
    convs = [ghost.primary_conv[0], ghost.cheap_operation[0]]
    saved = [c.padding for c in convs]
    for c in convs:
        c.padding = (0,) * len(c.kernel_size)
    try:
        yield
    finally:
        for c, p in zip(convs, saved, strict=True):
            c.padding = p


def _valid_forward(ghost: GhostModule, x: torch.Tensor) -> torch.Tensor:
    """GhostModule.forward on an input crop, padding off: the intrinsic maps cut to the cheap
    operation's valid window, so both parts cover the same output positions."""
    with _valid_padding(ghost):
        intrinsic = ghost.primary_conv(x)
        cheap = ghost.cheap_operation(intrinsic)
    margin = [k // 2 for k in ghost.cheap_operation[0].kernel_size]
    inner = intrinsic[(slice(None), slice(None), *[slice(m, intrinsic.shape[2 + a] - m) for a, m in
                                                   enumerate(margin)])]
    out = torch.cat([inner, cheap], dim=1)
    if ghost.trim:
        out = out[:, : ghost.n]
    if ghost.channel_order is not None:
        out = out.index_select(1, ghost.channel_order)
    return out


def _forward(ghost: GhostModule, pool: RefinePool) -> Callable[[torch.Tensor], torch.Tensor]:
    return (lambda x: _valid_forward(ghost, x)) if pool.cropped else ghost


def _pool_error(ghost: GhostModule, pool: RefinePool, device: torch.device) -> float:
    meter = ErrorMeter()
    run = _forward(ghost, pool)
    with torch.no_grad():
        for x, t in zip(pool.xs, pool.ts, strict=True):
            meter.add(run(x.to(device).float()), t.to(device).float())
    return meter.value


def refine(ghost: GhostModule, pool: RefinePool, config: TransferConfig, seconds: float | None,
           device: torch.device) -> tuple[float, float, int]:
    """Refine ``ghost`` in place on ``pool``: (error before, error after, steps run).

    BatchNorm stays in eval mode (its statistics are re-estimated afterwards). The result is
    kept only if it lowers the error over the pool; else the fit is restored.
    """
    if pool.count == 0 or config.refine_steps <= 0:
        return math.nan, math.nan, 0
    ghost.eval()
    start = time.perf_counter()
    before = _pool_error(ghost, pool, device)
    if seconds is not None:  # the budget covers the two evaluations too
        seconds -= 2 * (time.perf_counter() - start)
        if seconds <= 0:
            return before, before, 0
    saved = {k: v.detach().clone() for k, v in ghost.state_dict().items()}
    steps = _adam(ghost, pool, config, seconds, device)
    after = _pool_error(ghost, pool, device)
    if not math.isfinite(after) or after >= before:
        ghost.load_state_dict(saved)
        after = before
    return before, after, steps


def _adam(ghost: GhostModule, pool: RefinePool, config: TransferConfig, seconds: float | None,
          device: torch.device) -> int:
    """Adam with a cosine schedule that ends when the step or the time budget does (whichever first)."""
    params = [p for p in ghost.parameters() if p.is_floating_point()]
    flags = [p.requires_grad for p in params]
    opt = torch.optim.Adam(params, lr=config.refine_lr)
    t_all = torch.cat(pool.ts).float()
    dims = [0] + list(range(2, t_all.dim()))
    # one fixed scale (not per mini-batch): steps stay comparable
    scale = (t_all - t_all.mean(dims, keepdim=True)).pow(2).mean().clamp_min(1e-12).to(device)
    planned, start, step = config.refine_steps, time.perf_counter(), 0
    run = _forward(ghost, pool)
    try:
        for p in params:
            p.requires_grad_(True)
        with torch.enable_grad():
            for step, (x, t) in enumerate(pool.batches(config.refine_batch, device), 1):
                for group in opt.param_groups:
                    group["lr"] = config.refine_lr * 0.5 * (1 + math.cos(math.pi * (step - 1) / planned))
                loss = F.mse_loss(run(x), t) / scale
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if step == 5 and seconds is not None:  # now the cost of a step is known: fit the schedule
                    per_step = (time.perf_counter() - start) / step
                    planned = max(step + 1, min(planned, int(seconds / per_step)))
                if step >= planned:
                    break
    finally:
        for p, f in zip(params, flags, strict=True):
            p.requires_grad_(f)
    return step
