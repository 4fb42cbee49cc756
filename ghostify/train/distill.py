"""``finetune``: distillation fine-tuning of a Ghost model from its original (the teacher).

One run reads as config → data → loop → checkpoint: the config, checked and resolved
(``config.py``); the data, as this process reads it (``data.py``: shard, batches, run length),
with the two models checked against each other on a sample's size and placed on the device
(``distributed.py``: DDP under torchrun); the optimizer and LR schedule (``optim.py``); the
checkpoint, restored on ``resume`` (``checkpoint.py``); then the loop (``loop.py``), which logs,
evaluates and checkpoints as it goes. The loss is ``loss.py``'s: Hinton's KD plus labels, and an
optional per-layer feature term.

Under ``torchrun`` (``WORLD_SIZE`` > 1) each rank trains its shard in DistributedDataParallel;
the batch size given is the global batch. Only rank 0 writes (checkpoints, metrics, output).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.data import Dataset

from ghostify.errors import GhostifyError
from ghostify.forward import check_forward
from ghostify.train.checkpoint import Checkpointer, Position
from ghostify.train.config import FinetuneConfig, FinetuneResult
from ghostify.train.data import TrainData
from ghostify.train.distributed import DistContext, dist_context, wrap_student
from ghostify.train.loop import DistillLoop, MetricsLog, Progress
from ghostify.train.optim import Optimization
from ghostify.utils import preserved_modes

__all__ = ["finetune", "check_distillable"]


def check_distillable(student: nn.Module, teacher: nn.Module, input_size: tuple[int, ...]) -> int:
    """The number of classes, once both models take ``input_size`` and give the same class logits (batch, classes).

    Run before any training, so that the wrong teacher (or input size) is one clear line, not an
    error from deep inside the loss.
    """
    ys, yt = check_forward(student, input_size), check_forward(teacher, input_size)  # one-line errors
    for who, y in (("student", ys), ("teacher", yt)):
        if not isinstance(y, torch.Tensor):
            raise GhostifyError(f"the {who} returned {type(y).__name__}; distillation needs class logits "
                                "(batch, classes)", param=who)
    if ys.shape != yt.shape:
        raise GhostifyError(f"student output {tuple(ys.shape)} and teacher output {tuple(yt.shape)} differ",
                            param="teacher", hint="is the teacher the model the student was converted from?")
    if yt.dim() != 2:
        raise GhostifyError(f"the teacher's output has shape {tuple(yt.shape)}; distillation needs class logits "
                            "(batch, classes)", param="teacher")
    return int(yt.shape[-1])


def finetune(
    student: nn.Module,
    teacher: nn.Module,
    train_data: Dataset,
    test_data: Dataset | None = None,
    config: FinetuneConfig | None = None,
    *,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    metrics: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    progress: Progress | None = None,
    on_step: Callable[[int], None] | None = None,
) -> FinetuneResult:
    """Distill ``teacher`` into ``student`` (in place) on ``train_data``; see the module docstring.

    ``checkpoint``: where the per-epoch checkpoint goes (and is read from with ``resume``).
    ``metrics``: a JSON-lines file (appended). ``progress(done, total, text)`` reports the steps
    (rank 0 only). ``on_step(global_step)`` runs after each step (tests use it to interrupt a run).
    """
    cfg = (config or FinetuneConfig()).resolved()
    # the teacher is borrowed: it runs in eval mode on the training device, then goes back to the
    # mode of each of its modules and the device it came on (the caller may still train or convert it)
    home = next((t.device for t in (*teacher.parameters(), *teacher.buffers())), None)
    ctx = dist_context(device)
    try:
        with preserved_modes(teacher):
            return _run(student, teacher, train_data, test_data, cfg, ctx, checkpoint, resume, metrics,
                        progress, on_step)
    finally:
        ctx.close()
        if home is not None:
            teacher.to(home)


def _run(student: nn.Module, teacher: nn.Module, train_data: Dataset, test_data: Dataset | None,
         cfg: FinetuneConfig, ctx: DistContext, checkpoint: str | os.PathLike | None, resume: bool,
         metrics: str | os.PathLike | None, progress: Progress | None,
         on_step: Callable[[int], None] | None) -> FinetuneResult:
    data = TrainData(train_data, cfg, ctx)
    # before the seed: the check draws its inputs from the global RNG, which the seed then resets
    data.check_labels(check_distillable(student, teacher, data.sample_size))
    torch.manual_seed(cfg.seed)
    student.to(ctx.device)
    # the teacher runs under no_grad; its requires_grad flags are left alone: freezing them here
    # would freeze every layer a later ghostify.convert(teacher) copies unconverted (stem, head)
    teacher.to(ctx.device).eval()  # finetune() restores its modes and device afterwards
    student, model = wrap_student(student, ctx)
    optim = Optimization.build(student, cfg, data.total, ctx.device)
    checkpoints = Checkpointer(checkpoint, student, optim, cfg, data.total, ctx)
    position, history = checkpoints.restore() if resume else (Position(), [])
    with MetricsLog(history, metrics, ctx) as log:
        loop = DistillLoop(student=student, model=model, teacher=teacher, data=data, test_data=test_data,
                           optim=optim, cfg=cfg, ctx=ctx, checkpoints=checkpoints, log=log, position=position,
                           progress=progress, on_step=on_step)
        return loop.run(resumed=resume)
