"""One process or many: torchrun's environment, the process group, the DDP-wrapped student.

Under ``torchrun`` (``WORLD_SIZE`` > 1) the student is wrapped in DistributedDataParallel (gloo
on CPU, nccl on CUDA). Only rank 0 writes (checkpoints, metrics, output). Batch statistics
differ per rank: on CUDA BatchNorm becomes SyncBatchNorm; on CPU (where PyTorch has no
SyncBatchNorm) ``freeze_bn`` gives results independent of the process count.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from ghostify.errors import GhostifyError, InvalidValueError

__all__ = ["DistContext", "dist_context", "is_main_process", "wrap_student"]


def _env(name: str, default: int) -> int:
    return int(os.environ.get(name, str(default)))


def is_main_process() -> bool:
    """Whether this process is rank 0 of a torchrun job (or the only one): the one that writes."""
    return _env("RANK", 0) == 0


@dataclass
class DistContext:
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        if self.initialized_here and dist.is_initialized():
            dist.destroy_process_group()


def _device(device: str | torch.device | None, local: int) -> torch.device:
    """The training device: ``auto`` picks this rank's GPU if there is one, else the CPU."""
    if device is None or str(device) == "auto":
        return torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InvalidValueError("device", f"must be auto, cpu or cuda[:N], got {device!r}") from None
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device(f"cuda:{local}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise GhostifyError("device cuda asked for, but CUDA is not available", param="device")
    return dev


def dist_context(device: str | torch.device | None = None) -> DistContext:
    """Read torchrun's environment; start the process group (gloo on CPU, nccl on CUDA)."""
    world, rank, local = _env("WORLD_SIZE", 1), _env("RANK", 0), _env("LOCAL_RANK", 0)
    dev = _device(device, local)
    ctx = DistContext(world_size=world, rank=rank, local_rank=local, device=dev)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        ctx.initialized_here = True
    return ctx


def wrap_student(student: nn.Module, ctx: DistContext) -> tuple[nn.Module, nn.Module]:
    """(student, model): the student that is trained and saved, and what the forward pass calls.

    In one process both are the student. Under DDP ``model`` is its DistributedDataParallel
    wrapper, and on CUDA ``student`` is the SyncBatchNorm version of the one given.
    """
    if not ctx.distributed:
        return student, student
    dev = ctx.device
    if dev.type == "cuda":
        student = nn.SyncBatchNorm.convert_sync_batchnorm(student)
    with warnings.catch_warnings():  # rank-local BN buffers are intended; newer torch warns about the flag
        warnings.simplefilter("ignore", FutureWarning)
        model = nn.parallel.DistributedDataParallel(
            student, device_ids=[dev.index] if dev.type == "cuda" else None, broadcast_buffers=False)
    return student, model
