"""Data-free calibration inputs distilled from the original model's BatchNorm statistics.

Every BatchNorm layer remembers the mean and variance of the activations it saw in training.
Starting from noise, inputs are optimised until the batch statistics at every BatchNorm match
those running statistics (the idea of ZeroQ, Cai et al., CVPR 2020). The calibrated transfer
fit then runs on these inputs instead of real images: no data is needed, and unlike the
weight-space fit it sees the activations' real correlations.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["synthesize_inputs", "has_batchnorm"]


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.BatchNorm2d) and m.running_mean is not None for m in model.modules())


def synthesize_inputs(
    model: nn.Module,
    input_size: Sequence[int],
    samples: int = 256,
    steps: int = 300,
    lr: float = 0.1,
    seed: int = 0,
) -> torch.Tensor:
    """``samples`` inputs of shape ``input_size`` whose BatchNorm batch statistics match ``model``'s."""
    p = next(model.parameters())
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, *input_size, generator=gen).to(device=p.device, dtype=p.dtype).requires_grad_(True)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None]
    seen: list[tuple[torch.Tensor, torch.Tensor, nn.BatchNorm2d]] = []

    def hook(mod: nn.Module, inp: tuple, out: torch.Tensor) -> None:
        a = inp[0]
        seen.append((a.mean((0, 2, 3)), a.var((0, 2, 3), unbiased=False), mod))

    handles = [m.register_forward_hook(hook) for m in norms]
    was_training = model.training
    model.eval()
    frozen = [q for q in model.parameters() if q.requires_grad]
    for q in frozen:  # only the inputs are optimised
        q.requires_grad_(False)
    opt = torch.optim.Adam([x], lr=lr)
    try:
        for _ in range(steps):
            seen.clear()
            model(x)
            loss = sum(F.mse_loss(mean, m.running_mean) + F.mse_loss(var, m.running_var) for mean, var, m in seen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    finally:
        for h in handles:
            h.remove()
        for q in frozen:
            q.requires_grad_(True)
        model.train(was_training)
    return x.detach()
