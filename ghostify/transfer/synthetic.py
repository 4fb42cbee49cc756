"""Data-free calibration inputs distilled from the original model's BatchNorm statistics.

Every BatchNorm layer remembers the mean and variance of the activations it saw in training.
Starting from noise, inputs are optimised until the batch statistics at every BatchNorm match
those running statistics (the idea of ZeroQ, Cai et al., CVPR 2020). The calibrated transfer
fit then runs on these inputs instead of real data: no data is needed, and unlike the
weight-space fit it sees the activations' real correlations.

Inputs are distilled a batch at a time (the statistics matched are those of one batch), so the
cost is ``samples x steps`` forward and backward passes whatever the batch, and memory is one
batch's. A smaller spatial size costs quadratically less; docs/transfer.md measures the choice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ghostify.layers.surgery import NORM_TYPES
from ghostify.utils import eval_mode, module_device_dtype

__all__ = ["synthesize_inputs", "has_batchnorm"]

_NORMS = tuple(NORM_TYPES.values())


def _tracked_norms(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, _NORMS) and m.running_mean is not None]


def has_batchnorm(model: nn.Module) -> bool:
    return bool(_tracked_norms(model))


def _distil_batch(model: nn.Module, norms: list[nn.Module], x: torch.Tensor, steps: int, lr: float,
                  tick: Callable[[], None]) -> torch.Tensor:
    seen: list[tuple[torch.Tensor, torch.Tensor, nn.Module]] = []

    def hook(mod: nn.Module, inp: tuple, out: torch.Tensor) -> None:
        a = inp[0]
        dims = [0] + list(range(2, a.dim()))
        seen.append((a.mean(dims), a.var(dims, unbiased=False), mod))

    handles = [m.register_forward_hook(hook) for m in norms]
    x = x.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    try:
        for _ in range(steps):
            seen.clear()
            model(x)
            loss = sum(F.mse_loss(mean, m.running_mean) + F.mse_loss(var, m.running_var) for mean, var, m in seen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tick()
    finally:
        for h in handles:
            h.remove()
    return x.detach()


def synthesize_inputs(
    model: nn.Module,
    input_size: Sequence[int],
    samples: int = 256,
    steps: int = 300,
    lr: float = 0.1,
    seed: int = 0,
    batch: int = 32,
    progress: Callable[[int, int, str], None] | None = None,
) -> torch.Tensor:
    """``samples`` inputs of shape ``input_size`` whose BatchNorm batch statistics match ``model``'s.

    ``progress(step, total_steps, text)`` is called after every optimiser step.
    """
    device, dtype = module_device_dtype(model)
    gen = torch.Generator().manual_seed(seed)
    norms = _tracked_norms(model)
    total = steps * -(-samples // batch)
    done = [0]

    def tick() -> None:
        done[0] += 1
        if progress is not None:
            progress(done[0], total, f"distilling inputs from BatchNorm statistics ({samples} inputs)")

    frozen = [q for q in model.parameters() if q.requires_grad]
    out = []
    with eval_mode(model):
        for q in frozen:  # only the inputs are optimised
            q.requires_grad_(False)
        try:
            for start in range(0, samples, batch):
                count = min(batch, samples - start)
                x = torch.randn(count, *input_size, generator=gen).to(device=device, dtype=dtype)
                out.append(_distil_batch(model, norms, x, steps, lr, tick))
        finally:
            for q in frozen:
                q.requires_grad_(True)
    return torch.cat(out)
