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

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ghostify.layers.surgery import NORM_TYPES
from ghostify.utils import eval_mode, module_device_dtype

__all__ = ["synthesize_inputs", "has_batchnorm", "plan_synthesis"]

MIN_STEPS = 50  # below this the statistics are barely matched
MIN_SIZE = 32  # per spatial axis: a smaller map loses the deep layers' spatial extent

_NORMS = tuple(NORM_TYPES.values())


def _tracked_norms(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, _NORMS) and m.running_mean is not None]


def has_batchnorm(model: nn.Module) -> bool:
    return bool(_tracked_norms(model))


def _distil_batch(model: nn.Module, norms: list[nn.Module], x: torch.Tensor, steps: int, lr: float,
                  tick: Callable[[], None], deadline: float | None = None) -> tuple[torch.Tensor, int]:
    """``x`` after up to ``steps`` Adam steps (fewer if ``deadline``, a perf_counter time, passes)."""
    seen: list[tuple[torch.Tensor, torch.Tensor, nn.Module]] = []

    def hook(mod: nn.Module, inp: tuple, out: torch.Tensor) -> None:
        a = inp[0]
        dims = [0] + list(range(2, a.dim()))
        seen.append((a.mean(dims), a.var(dims, unbiased=False), mod))

    handles = [m.register_forward_hook(hook) for m in norms]
    x = x.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    done = 0
    try:
        for _ in range(steps):
            if deadline is not None and done and time.perf_counter() > deadline:
                break  # the plan measured a step before the run: a busier machine must not overrun it
            seen.clear()
            model(x)
            loss = sum(F.mse_loss(mean, m.running_mean) + F.mse_loss(var, m.running_var) for mean, var, m in seen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
            tick()
    finally:
        for h in handles:
            h.remove()
    return x.detach(), done


def _step_seconds(model: nn.Module, norms: list[nn.Module], size: Sequence[int], batch: int) -> float:
    """Seconds for one distillation step of ``batch`` inputs of ``size`` (second of two: no warm-up)."""
    device, dtype = module_device_dtype(model)
    x = torch.randn(batch, *size).to(device=device, dtype=dtype)
    _distil_batch(model, norms, x, 1, 0.0, lambda: None)
    start = time.perf_counter()
    _distil_batch(model, norms, x, 1, 0.0, lambda: None)
    return time.perf_counter() - start


def plan_synthesis(model: nn.Module, input_size: Sequence[int], samples: int, steps: int, seconds: float | None,
                   batch: int = 32) -> tuple[tuple[int, ...], int]:
    """(input size, steps) that distil ``samples`` inputs within ``seconds`` on this machine.

    Fewer steps first (down to 50), then half the resolution per spatial axis (down to 32), each
    step measured here; ``seconds=None`` keeps the size and steps asked for.
    """
    size = tuple(int(v) for v in input_size)
    if seconds is None:
        return size, steps
    norms = _tracked_norms(model)
    batches = -(-samples // batch)
    with eval_mode(model), _frozen(model):
        while True:
            per_step = _step_seconds(model, norms, size, min(batch, samples)) * batches
            fit = int(seconds / max(per_step, 1e-9))
            spatial = size[1:]
            if fit >= MIN_STEPS or all(v <= MIN_SIZE for v in spatial):
                return size, max(1, min(steps, fit))
            size = (size[0], *[max(MIN_SIZE, v // 2) for v in spatial])


def synthesize_inputs(
    model: nn.Module,
    input_size: Sequence[int],
    samples: int = 256,
    steps: int = 300,
    lr: float = 0.1,
    seed: int = 0,
    batch: int = 32,
    progress: Callable[[int, int, str], None] | None = None,
    seconds: float | None = None,
) -> tuple[torch.Tensor, int]:
    """``samples`` inputs of shape ``input_size`` whose BatchNorm batch statistics match ``model``'s,
    and the fewest steps any batch got.

    ``progress(step, total_steps, text)`` is called after every optimiser step. ``seconds`` is a
    deadline: each batch stops at its share of it, after at least one step.
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

    out, steps_run = [], steps
    begin, batches = time.perf_counter(), -(-samples // batch)
    with eval_mode(model), _frozen(model):
        for i, start in enumerate(range(0, samples, batch)):
            count = min(batch, samples - start)
            x = torch.randn(count, *input_size, generator=gen).to(device=device, dtype=dtype)
            deadline = None if seconds is None else begin + seconds * (i + 1) / batches
            x, done_steps = _distil_batch(model, norms, x, steps, lr, tick, deadline)
            out.append(x)
            steps_run = min(steps_run, done_steps)
    return torch.cat(out), steps_run


@contextlib.contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """Only the inputs are optimised: the model's parameters take no gradient, then as they were."""
    frozen = [q for q in model.parameters() if q.requires_grad]
    for q in frozen:
        q.requires_grad_(False)
    try:
        yield
    finally:
        for q in frozen:
            q.requires_grad_(True)
