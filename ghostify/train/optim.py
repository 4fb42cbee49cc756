"""The optimizer side of a run: SGD (Nesterov) or AdamW, linear warm-up then cosine decay, AMP.

AMP (fp16 autocast + GradScaler) runs on CUDA only; on the CPU the scaler is a no-op.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ghostify.errors import GhostifyError
from ghostify.train.config import FinetuneConfig

__all__ = ["Optimization", "warmup_cosine"]


def warmup_cosine(total: int, warmup: int) -> Callable[[int], float]:
    """The LR factor at each step: linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return factor


@dataclass
class Optimization:
    """Optimizer, LR scheduler and grad scaler: stepped together, checkpointed together."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    amp: bool  # fp16 autocast in the forward passes (CUDA only)

    @classmethod
    def build(cls, student: nn.Module, cfg: FinetuneConfig, total: int, device: torch.device) -> Optimization:
        """For the trainable parameters of ``student``, over a run of ``total`` steps (``cfg`` resolved)."""
        params = [p for p in student.parameters() if p.requires_grad]
        if not params:
            raise GhostifyError("the student has no trainable parameters (all have requires_grad=False)")
        if cfg.optimizer == "sgd":
            opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                                                         weight_decay=cfg.weight_decay, nesterov=cfg.momentum > 0)
        else:
            opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        length = cfg.schedule_steps or total
        warmup = cfg.warmup_steps if cfg.warmup_steps is not None else min(200, int(0.05 * length))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(length, warmup))
        amp = cfg.amp and device.type == "cuda"
        return cls(opt, sched, torch.amp.GradScaler("cuda", enabled=amp), amp)

    def step(self, loss: torch.Tensor) -> None:
        """One optimizer step on ``loss`` (scaled under AMP), then the schedule's."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()

    @property
    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
