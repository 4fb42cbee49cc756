"""The distillation loop: epochs of steps, each step logged, evaluated and checkpointed on schedule.

:class:`DistillLoop` holds one run's state explicitly (its :class:`Position`, the records it has
written); the parts it drives (data, optimizer, checkpointer, metrics log) are built by
:func:`ghostify.train.finetune` and handed in.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from typing import IO, Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ghostify.errors import GhostifyError
from ghostify.train.checkpoint import Checkpointer, Position
from ghostify.train.config import FinetuneConfig, FinetuneResult
from ghostify.train.data import TrainData
from ghostify.train.distributed import DistContext
from ghostify.train.evaluate import evaluate
from ghostify.train.loss import FeatureTaps, distill_loss, feature_taps
from ghostify.train.optim import Optimization

__all__ = ["DistillLoop", "MetricsLog", "set_train"]

Progress = Callable[[int, int, str], None]  # (done, total, what is happening now)


def set_train(model: nn.Module, freeze_bn: bool) -> None:
    """Training mode; with ``freeze_bn`` BatchNorm stays in eval mode (running statistics fixed)."""
    model.train()
    if freeze_bn:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


class MetricsLog:
    """The run's records: kept in ``history`` (and so in each checkpoint), appended as JSON lines to ``path``.

    ``path`` is only opened where it is given and on rank 0; the log closes as a context manager.
    """

    def __init__(self, history: list[dict[str, Any]], path: str | os.PathLike | None, ctx: DistContext) -> None:
        self.history = history
        self._fh: IO[str] | None = open(path, "a") if (path is not None and ctx.is_main) else None  # noqa: SIM115

    def emit(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        if self._fh is not None:
            self._fh.write(json.dumps(record) + "\n")
            self._fh.flush()

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fh is not None:
            self._fh.close()


class DistillLoop:
    """Distil ``teacher`` into ``student`` step by step, from ``position`` to the run's last step."""

    def __init__(self, *, student: nn.Module, model: nn.Module, teacher: nn.Module, data: TrainData,
                 test_data: Dataset | None, optim: Optimization, cfg: FinetuneConfig, ctx: DistContext,
                 checkpoints: Checkpointer, log: MetricsLog, position: Position,
                 progress: Progress | None = None, on_step: Callable[[int], None] | None = None) -> None:
        self.student, self.model, self.teacher = student, model, teacher  # model: the student, or its DDP wrapper
        self.data, self.test_data, self.optim, self.cfg, self.ctx = data, test_data, optim, cfg, ctx
        self.checkpoints, self.log, self.position = checkpoints, log, position
        self.progress = progress if ctx.is_main else None
        self.on_step = on_step
        self.teacher_acc: float | None = None
        self.student_acc: float | None = None
        self.taps: FeatureTaps | None = None
        self.t0 = 0.0

    def run(self, resumed: bool = False) -> FinetuneResult:
        """Train to the end (or ``max_steps``); a KeyboardInterrupt checkpoints first, so ``resume`` continues."""
        pos, total = self.position, self.data.total
        resumed_from = pos.global_step if resumed else None
        self._start(resumed)
        try:
            self.taps = feature_taps(self.student, self.teacher, self.cfg.feature_weight, self.cfg.feature_layers)
            while pos.global_step < total and pos.epoch < self.cfg.epochs:
                self._epoch()
        except KeyboardInterrupt:
            self.save()  # the interrupted epoch resumes at this step
            raise
        finally:
            if self.taps is not None:
                self.taps.close()
        self.student.eval()
        return FinetuneResult(steps=pos.global_step, epochs_done=pos.epoch, student_acc=self.student_acc,
                              teacher_acc=self.teacher_acc, history=self.log.history, resumed_from=resumed_from)

    def save(self) -> None:
        self.checkpoints.save(self.position, self.log.history)

    def _test_acc(self, model: nn.Module) -> float | None:
        """Test accuracy, measured on rank 0 (None elsewhere or without test data); every rank waits for it."""
        acc = None
        if self.test_data is not None and self.ctx.is_main:
            acc = evaluate(model, self.test_data, self.cfg.eval_batch_size, self.ctx.device, self.optim.amp)
        self.ctx.barrier()
        return acc

    def _start(self, resumed: bool) -> None:
        """The teacher's accuracy (once), the student's before any step (not again on resume)."""
        if self.test_data is not None:
            self.teacher_acc = self._test_acc(self.teacher) if self.cfg.evaluate_teacher else None
            if not resumed:
                self.log.emit({"event": "start", "step": 0, "student_acc": self._test_acc(self.student),
                               "teacher_acc": self.teacher_acc, "total_steps": self.data.total,
                               "world_size": self.ctx.world_size})
        if self.progress is not None:
            self.progress(self.position.global_step, self.data.total, "")
        self.t0 = time.time()

    def _epoch(self) -> None:
        """The rest of the current epoch; at its end, the test accuracy and a checkpoint."""
        pos = self.position
        set_train(self.model, self.cfg.freeze_bn)
        for x, y in self.data.batches(pos.epoch, pos.step_in_epoch):
            self._step(x, y)
            if pos.global_step >= self.data.total:
                break
        if pos.step_in_epoch >= self.data.steps_per_epoch or pos.global_step >= self.data.total:
            self.student_acc = self._test_acc(self.student)
            self.log.emit({"event": "epoch", "epoch": pos.epoch + 1, "step": pos.global_step,
                           "student_acc": self.student_acc, "teacher_acc": self.teacher_acc,
                           "time_s": round(time.time() - self.t0, 2)})
            pos.epoch += 1
            pos.step_in_epoch = 0
            self.save()

    def _losses(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, float, float, float]:
        """(loss, kd, ce, feature) of one batch: the teacher under no_grad, the student with grad."""
        use_amp = self.optim.amp
        with torch.no_grad(), torch.autocast(device_type="cuda", dtype=torch.float16, enabled=use_amp):
            t_logits = self.teacher(x)
        with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=use_amp):
            s_logits = self.model(x)
        loss, kd, ce = distill_loss(s_logits, t_logits, y, self.cfg.temperature, self.cfg.alpha)
        feat = 0.0
        if self.taps is not None:
            feature_loss = self.taps.loss()
            feat = float(feature_loss.detach())
            loss = loss + self.cfg.feature_weight * feature_loss
        return loss, kd, ce, feat

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """One optimizer step, then what is due after it: progress, a record, an evaluation, a checkpoint."""
        pos, cfg, total = self.position, self.cfg, self.data.total
        dev = self.ctx.device
        loss, kd, ce, feat = self._losses(x.to(dev, non_blocking=True), y.to(dev, non_blocking=True))
        loss_value = float(loss.detach())
        self.optim.step(loss)
        pos.global_step += 1
        pos.step_in_epoch += 1
        step = pos.global_step
        if not math.isfinite(loss_value):
            raise GhostifyError(f"the loss became {loss_value} at step {step}", param="lr",
                                hint="lower the learning rate")
        if self.progress is not None:
            self.progress(step, total, f"epoch {pos.epoch + 1} loss {loss_value:.3f}")
        if step % cfg.log_every == 0 or step == total:
            self.log.emit({"event": "step", "step": step, "epoch": pos.epoch, "loss": round(loss_value, 5),
                           "kd": round(kd, 5), "ce": round(ce, 5), "feature": round(feat, 5),
                           "lr": self.optim.lr, "time_s": round(time.time() - self.t0, 2)})
        if step in cfg.eval_at_steps and self.test_data is not None:
            self.log.emit({"event": "eval", "step": step, "epoch": pos.epoch,
                           "student_acc": self._test_acc(self.student), "teacher_acc": self.teacher_acc})
            set_train(self.model, cfg.freeze_bn)
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < total:
            self.save()
        if self.on_step is not None:
            self.on_step(step)
