"""What a fine-tuning run is asked to do (``FinetuneConfig``) and what it did (``FinetuneResult``).

``FinetuneConfig.resolved()`` is the one place the settings are checked and the optimizer's
defaults filled in; everything downstream reads the resolved copy.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from ghostify.errors import GhostifyError, InvalidValueError

__all__ = ["FinetuneConfig", "FinetuneResult"]


@dataclass
class FinetuneConfig:
    epochs: int = 1
    max_steps: int | None = None  # stop after this many optimizer steps in total
    batch_size: int = 128  # global batch (all ranks together)
    lr: float | None = None  # default: 0.01 (sgd) / 1e-3 (adamw)
    optimizer: str = "sgd"  # sgd | adamw
    momentum: float = 0.9
    weight_decay: float | None = None  # default: 5e-4 (sgd) / 0.05 (adamw)
    warmup_steps: int | None = None  # default: 5% of the steps, at most 200
    temperature: float = 4.0
    alpha: float = 0.9  # weight of the distillation term; 1 - alpha on the labels
    feature_weight: float = 0.0  # weight of the per-layer feature term (0: logits only)
    feature_layers: list[str] | None = None  # default: every layer the conversion plan converted
    amp: bool = True  # only on CUDA
    freeze_bn: bool = False  # BatchNorm in eval mode (statistics fixed, affine trained)
    seed: int = 0
    num_workers: int = 0
    eval_batch_size: int = 500
    log_every: int = 50
    checkpoint_every: int | None = None  # also checkpoint every N steps (besides each epoch)
    eval_at_steps: list[int] = field(default_factory=list)  # extra test evaluations at these steps
    evaluate_teacher: bool = True  # measure the teacher's test accuracy too (once per run)
    schedule_steps: int | None = None  # length of the LR schedule (default: the run's); a shorter run
    # with the schedule of a longer one reproduces that run's first steps

    def resolved(self) -> FinetuneConfig:
        """A checked copy with the optimizer's defaults filled in (GhostifyError naming the field)."""
        cfg = FinetuneConfig(**asdict(self))
        cfg.optimizer = cfg.optimizer.lower()
        if cfg.optimizer not in ("sgd", "adamw"):
            raise GhostifyError(f"optimizer must be sgd or adamw, got {self.optimizer!r}", param="optimizer")
        if cfg.lr is None:
            cfg.lr = 0.01 if cfg.optimizer == "sgd" else 1e-3
        if cfg.weight_decay is None:
            cfg.weight_decay = 5e-4 if cfg.optimizer == "sgd" else 0.05
        if cfg.epochs < 1:
            raise GhostifyError(f"epochs must be >= 1, got {cfg.epochs}", param="epochs")
        if cfg.max_steps is not None and cfg.max_steps < 1:
            raise InvalidValueError("max_steps", f"must be >= 1, got {cfg.max_steps}")
        if cfg.batch_size < 1:
            raise GhostifyError(f"batch size must be >= 1, got {cfg.batch_size}", param="batch_size")
        if not 0.0 <= cfg.alpha <= 1.0:
            raise GhostifyError(f"alpha must be in [0, 1], got {cfg.alpha}", param="alpha")
        if cfg.temperature <= 0:
            raise GhostifyError(f"temperature must be > 0, got {cfg.temperature}", param="temperature")
        if cfg.feature_weight < 0 or not math.isfinite(cfg.feature_weight):
            raise GhostifyError(f"feature weight must be >= 0, got {cfg.feature_weight}", param="feature_weight")
        if not cfg.lr > 0 or not math.isfinite(cfg.lr):
            raise GhostifyError(f"learning rate must be a finite number > 0, got {cfg.lr}", param="lr")
        if not cfg.weight_decay >= 0 or not math.isfinite(cfg.weight_decay):
            raise GhostifyError(f"weight decay must be a finite number >= 0, got {cfg.weight_decay}",
                                param="weight_decay")
        if cfg.warmup_steps is not None and cfg.warmup_steps < 0:
            raise GhostifyError(f"warm-up steps must be >= 0, got {cfg.warmup_steps}", param="warmup_steps")
        if cfg.checkpoint_every is not None and cfg.checkpoint_every < 1:
            raise InvalidValueError("checkpoint_every", f"must be >= 1 step, got {cfg.checkpoint_every}")
        return cfg


@dataclass
class FinetuneResult:
    steps: int
    epochs_done: int
    student_acc: float | None
    teacher_acc: float | None
    history: list[dict[str, Any]]
    resumed_from: int | None = None  # the global step the run resumed at
