"""An optional refinement after the closed-form fit: Adam on the module's local reconstruction error.

The closed form fits each ghost's cheap filter to its target with the primary filters fixed;
refining primary and cheap filters (and BN affine) jointly can lower the module's error further.
It costs forward and backward passes of the module, so it runs only under a step budget (and an
optional time budget), and a layer keeps it only where it measurably helped: the error on the
calibration chunks must go down. docs/transfer.md measures what it buys.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ghostify.layers.ghost import GhostModule
from ghostify.transfer.config import TransferConfig
from ghostify.transfer.fit import ErrorMeter

__all__ = ["refine"]

Pair = Callable[[int], tuple[torch.Tensor, torch.Tensor]]  # chunk index -> (module input, target)


def _error(ghost: GhostModule, pair: Pair, chunks: list[int]) -> float:
    meter = ErrorMeter()
    with torch.no_grad():
        for c in chunks:
            x, t = pair(c)
            meter.add(ghost(x), t)
    return meter.value


def refine(ghost: GhostModule, pair: Pair, chunks: int, config: TransferConfig) -> tuple[float, float]:
    """Refine ``ghost`` in place on mini-batches of the calibration chunks; (error before, error after).

    BatchNorm stays in eval mode (its statistics are re-estimated afterwards). The result is
    kept only if it lowers the error over (up to eight of) the chunks; else the fit is restored.
    """
    ghost.eval()
    held = list(range(min(chunks, 8)))
    before = _error(ghost, pair, held)
    saved = {k: v.detach().clone() for k, v in ghost.state_dict().items()}
    params = [p for p in ghost.parameters() if p.is_floating_point()]
    flags = [p.requires_grad for p in params]
    opt = torch.optim.Adam(params, lr=config.refine_lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.refine_steps)
    gen = torch.Generator().manual_seed(config.seed)
    start = time.perf_counter()
    try:
        for p in params:
            p.requires_grad_(True)
        with torch.enable_grad():
            for _ in range(config.refine_steps):
                x, t = pair(int(torch.randint(0, chunks, (1,), generator=gen)))
                idx = torch.randint(0, x.shape[0], (min(config.refine_batch, x.shape[0]),), generator=gen)
                dims = [0] + list(range(2, t.dim()))
                scale = (t[idx] - t[idx].mean(dims, keepdim=True)).pow(2).mean().clamp_min(1e-12)
                loss = F.mse_loss(ghost(x[idx]), t[idx]) / scale
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                if config.refine_seconds is not None and time.perf_counter() - start > config.refine_seconds:
                    break
    finally:
        for p, f in zip(params, flags, strict=True):
            p.requires_grad_(f)
    after = _error(ghost, pair, held)
    if not math.isfinite(after) or after >= before:
        ghost.load_state_dict(saved)
        after = before
    return before, after
