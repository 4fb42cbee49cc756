"""Distillation fine-tuning of a Ghost model from its original (the teacher).

Loss: ``alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE``
(the label term only where labels exist), plus, with ``feature_weight`` > 0, a feature term: at
every converted layer the Ghost module's output is pulled towards the output of the convolution
it replaced (mean squared error over the teacher map's variance, averaged over layers): the
error transfer init fits layer by layer, kept in view while the whole network trains (off by
default; it did not help on the Fashion-MNIST bench). SGD (Nesterov) or AdamW, linear warm-up
then cosine decay, AMP (fp16 + GradScaler) on CUDA. A checkpoint after every epoch (and every
``checkpoint_every`` steps, and when interrupted) holds model, optimizer, scheduler, scaler, RNG
states and the sampler position, so ``resume`` continues exactly where the run stopped.

Under ``torchrun`` (``WORLD_SIZE`` > 1) the student is wrapped in DistributedDataParallel
(gloo on CPU, nccl on CUDA) and each rank reads its shard through a DistributedSampler; the
batch size given is the GLOBAL batch (split evenly over ranks), so one step sees the same
samples whatever the number of processes. Only rank 0 writes (checkpoints, metrics, output).
Batch statistics differ per rank: on CUDA BatchNorm becomes SyncBatchNorm; on CPU (where
PyTorch has no SyncBatchNorm) use ``freeze_bn`` for results independent of the process count.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler

from ghostify.errors import GhostifyError, InvalidValueError
from ghostify.utils import atomic_write

__all__ = ["FinetuneConfig", "FinetuneResult", "finetune", "evaluate", "distill_loss", "DistContext",
           "dist_context", "load_checkpoint", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = "ghostify.finetune-checkpoint/1"


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
        cfg = FinetuneConfig(**asdict(self))
        cfg.optimizer = cfg.optimizer.lower()
        if cfg.optimizer not in ("sgd", "adamw"):
            raise GhostifyError(f"optimizer must be sgd or adamw, got {self.optimizer!r}")
        if cfg.lr is None:
            cfg.lr = 0.01 if cfg.optimizer == "sgd" else 1e-3
        if cfg.weight_decay is None:
            cfg.weight_decay = 5e-4 if cfg.optimizer == "sgd" else 0.05
        if cfg.epochs < 1:
            raise GhostifyError(f"epochs must be >= 1, got {cfg.epochs}")
        if cfg.max_steps is not None and cfg.max_steps < 1:
            raise GhostifyError(f"max-steps must be >= 1, got {cfg.max_steps}")
        if cfg.batch_size < 1:
            raise GhostifyError(f"batch size must be >= 1, got {cfg.batch_size}")
        if not 0.0 <= cfg.alpha <= 1.0:
            raise GhostifyError(f"alpha must be in [0, 1], got {cfg.alpha}")
        if cfg.temperature <= 0:
            raise GhostifyError(f"temperature must be > 0, got {cfg.temperature}")
        if cfg.feature_weight < 0 or not math.isfinite(cfg.feature_weight):
            raise GhostifyError(f"feature weight must be >= 0, got {cfg.feature_weight}")
        if not cfg.lr > 0 or not math.isfinite(cfg.lr):
            raise GhostifyError(f"learning rate must be a finite number > 0, got {cfg.lr}")
        if not cfg.weight_decay >= 0 or not math.isfinite(cfg.weight_decay):
            raise GhostifyError(f"weight decay must be a finite number >= 0, got {cfg.weight_decay}")
        if cfg.warmup_steps is not None and cfg.warmup_steps < 0:
            raise GhostifyError(f"warm-up steps must be >= 0, got {cfg.warmup_steps}")
        if cfg.checkpoint_every is not None and cfg.checkpoint_every < 1:
            raise GhostifyError(f"checkpoint-every must be >= 1 step, got {cfg.checkpoint_every}")
        return cfg


@dataclass
class FinetuneResult:
    steps: int
    epochs_done: int
    student_acc: float | None
    teacher_acc: float | None
    history: list[dict[str, Any]]
    resumed_from: int | None = None  # the global step the run resumed at


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


def dist_context(device: str | torch.device | None = None) -> DistContext:
    """Read torchrun's environment; start the process group (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None or str(device) == "auto":
        dev = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError):
            raise InvalidValueError("device", f"must be auto, cpu or cuda[:N], got {device!r}") from None
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device(f"cuda:{local}")
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise GhostifyError("device cuda asked for, but CUDA is not available", param="device")
    ctx = DistContext(world_size=world, rank=rank, local_rank=local, device=dev)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        ctx.initialized_here = True
    return ctx


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None,
                 temperature: float, alpha: float) -> tuple[torch.Tensor, float, float]:
    """(total, kd, ce): Hinton's KD (scaled by T^2) plus cross-entropy on labelled samples."""
    t = temperature
    kd = F.kl_div(F.log_softmax(student_logits.float() / t, dim=1), F.log_softmax(teacher_logits.float() / t, dim=1),
                  reduction="batchmean", log_target=True) * (t * t)
    ce_value = 0.0
    total = kd
    if labels is not None and alpha < 1.0:
        mask = labels >= 0
        if bool(mask.any()):
            ce = F.cross_entropy(student_logits.float()[mask], labels[mask])
            ce_value = float(ce.detach())
            total = alpha * kd + (1.0 - alpha) * ce
    return total, float(kd.detach()), ce_value


class FeatureTaps:
    """Forward hooks that keep the outputs of same-named modules in the student and the teacher."""

    def __init__(self, student: nn.Module, teacher: nn.Module, names: list[str]) -> None:
        s_mods, t_mods = dict(student.named_modules()), dict(teacher.named_modules())
        missing = [n for n in names if n not in s_mods or n not in t_mods]
        if missing:
            raise GhostifyError(f"feature distillation: no module named {missing[0]!r} in both student and teacher")
        self.names = names
        self.student: dict[str, torch.Tensor] = {}
        self.teacher: dict[str, torch.Tensor] = {}
        self.handles = [s_mods[n].register_forward_hook(self._keep(self.student, n)) for n in names]
        self.handles += [t_mods[n].register_forward_hook(self._keep(self.teacher, n)) for n in names]

    @staticmethod
    def _keep(store: dict[str, torch.Tensor], name: str) -> Callable[..., None]:
        def hook(_mod: nn.Module, _inp: tuple, out: torch.Tensor) -> None:
            store[name] = out
        return hook

    def loss(self) -> torch.Tensor:
        """Mean over layers of MSE(student map, teacher map) / var(teacher map)."""
        terms = []
        for n in self.names:
            s_out, t_out = self.student.get(n), self.teacher.get(n)
            if s_out is None or t_out is None or s_out.shape != t_out.shape:
                raise GhostifyError(f"feature distillation: layer {n!r} gave no output or a different shape")
            t_out = t_out.float()
            terms.append(F.mse_loss(s_out.float(), t_out) / t_out.var().clamp_min(1e-8))
        self.student.clear()
        self.teacher.clear()
        return torch.stack(terms).mean()

    def close(self) -> None:
        for h in self.handles:
            h.remove()


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset, batch_size: int = 500, device: torch.device | str = "cpu",
             amp: bool = False) -> float | None:
    """Top-1 accuracy (%) on a labelled data set; None when it has no labels."""
    if getattr(data, "labels", 0) is None:
        return None
    was = model.training
    model.eval()
    correct = total = 0
    dev = torch.device(device)
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, generator=torch.Generator())  # global RNG untouched
    try:
        for x, y in loader:
            x, y = x.to(dev), y.to(dev)
            with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=amp and dev.type == "cuda"):
                out = model(x)
            mask = y >= 0
            correct += int((out.argmax(1)[mask] == y[mask]).sum())
            total += int(mask.sum())
    finally:
        model.train(was)
    return 100.0 * correct / total if total else None


class _SkipSampler(Sampler[int]):
    """The epoch's indices from a DistributedSampler, minus those already consumed (resume)."""

    def __init__(self, inner: DistributedSampler, skip: int) -> None:
        self.inner, self.skip = inner, skip

    def __iter__(self) -> Iterator[int]:
        return iter(list(self.inner)[self.skip:])

    def __len__(self) -> int:
        return max(0, len(self.inner) - self.skip)


def _schedule(total: int, warmup: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return factor


def _set_train(model: nn.Module, freeze_bn: bool) -> None:
    model.train()
    if freeze_bn:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    import io

    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write(path, buf.getvalue())


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A finetune checkpoint (tensors and plain data only: loaded with weights_only)."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = re.sub(r"\x1b\[[0-9;]*m", "", (str(exc).strip().splitlines() or [type(exc).__name__])[0])
        raise GhostifyError(f"{path}: not a readable finetune checkpoint ({first[:200]})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise GhostifyError(f"{path}: not a ghostify finetune checkpoint")
    return payload


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
    progress: Callable[[int, int, str], None] | None = None,
    on_step: Callable[[int], None] | None = None,
) -> FinetuneResult:
    """Distill ``teacher`` into ``student`` (in place) on ``train_data``; see the module docstring.

    ``checkpoint``: where the per-epoch checkpoint goes (and is read from with ``resume``).
    ``metrics``: a JSON-lines file (appended). ``on_step(global_step)`` runs after each step
    (tests use it to interrupt a run).
    """
    cfg = (config or FinetuneConfig()).resolved()
    # the teacher is borrowed: it runs in eval mode on the training device, then goes back to the
    # mode of each of its modules and the device it came on (the caller may still train or convert it)
    modes = [(m, m.training) for m in teacher.modules()]
    home = next((t.device for t in (*teacher.parameters(), *teacher.buffers())), None)
    ctx = dist_context(device)
    try:
        return _run(student, teacher, train_data, test_data, cfg, ctx, checkpoint, resume, metrics, progress, on_step)
    finally:
        ctx.close()
        for m, training in modes:
            m.training = training
        if home is not None:
            teacher.to(home)


def _run(student: nn.Module, teacher: nn.Module, train_data: Dataset, test_data: Dataset | None,
         cfg: FinetuneConfig, ctx: DistContext, checkpoint: str | os.PathLike | None, resume: bool,
         metrics: str | os.PathLike | None, progress: Callable[[int, int, str], None] | None,
         on_step: Callable[[int], None] | None) -> FinetuneResult:
    dev = ctx.device
    if cfg.batch_size % ctx.world_size:
        raise GhostifyError(f"batch size {cfg.batch_size} must be divisible by the {ctx.world_size} processes")
    per_rank = cfg.batch_size // ctx.world_size
    n = len(train_data)  # type: ignore[arg-type]
    if n < cfg.batch_size:
        raise GhostifyError(f"the training data has {n} samples, fewer than one batch of {cfg.batch_size}")
    sampler = DistributedSampler(train_data, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                 seed=cfg.seed, drop_last=True)
    steps_per_epoch = len(sampler) // per_rank
    total = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else min(200, int(0.05 * (cfg.schedule_steps or total)))

    torch.manual_seed(cfg.seed)
    student.to(dev)
    # the teacher runs under no_grad; its requires_grad flags are left alone: freezing them here
    # would freeze every layer a later ghostify.convert(teacher) copies unconverted (stem, head)
    teacher.to(dev).eval()  # finetune() restores its modes and device afterwards
    with torch.no_grad():  # a label beyond the model's outputs would fail deep inside cross-entropy
        classes = int(teacher(train_data[0][0].unsqueeze(0).to(dev)).shape[-1])
    labels = getattr(train_data, "labels", None)  # an in-memory label tensor: checked once, up front
    if isinstance(labels, torch.Tensor) and labels.numel() and int(labels.max()) >= classes:
        raise GhostifyError(f"the training data has labels up to {int(labels.max())}, but the model has {classes} "
                            "outputs: the data has more classes than the model")
    model: nn.Module = student
    if ctx.distributed:
        if dev.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(student)
            student = model
        import warnings

        with warnings.catch_warnings():  # rank-local BN buffers are intended; newer torch warns about the flag
            warnings.simplefilter("ignore", FutureWarning)
            model = nn.parallel.DistributedDataParallel(
                student, device_ids=[dev.index] if dev.type == "cuda" else None, broadcast_buffers=False)
    params = [p for p in student.parameters() if p.requires_grad]
    if not params:
        raise GhostifyError("the student has no trainable parameters (all have requires_grad=False)")
    if cfg.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                                                     weight_decay=cfg.weight_decay, nesterov=cfg.momentum > 0)
    else:
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched_len = cfg.schedule_steps or total
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(sched_len, warmup))
    use_amp = cfg.amp and dev.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    ckpt_path = Path(checkpoint) if checkpoint is not None else None
    epoch, skip, step = 0, 0, 0
    history: list[dict[str, Any]] = []
    resumed_from = None
    if resume:
        if ckpt_path is None or not ckpt_path.exists():
            raise GhostifyError(f"resume: no checkpoint at {ckpt_path}", param="resume")
        payload = load_checkpoint(ckpt_path)
        try:
            student.load_state_dict(payload["model"])
        except RuntimeError as exc:
            first = str(exc).splitlines()[0]
            raise GhostifyError(f"{ckpt_path}: checkpoint does not fit this model ({first})") from None
        opt.load_state_dict(payload["optimizer"])
        sched.load_state_dict(payload["scheduler"])
        scaler.load_state_dict(payload["scaler"])
        _set_rng_state(payload["rng"], dev)
        epoch, skip, step = payload["epoch"], payload["step_in_epoch"], payload["global_step"]
        history = list(payload.get("history", []))
        resumed_from = step
        if payload.get("total_steps") != total:
            raise GhostifyError(f"{ckpt_path}: the checkpoint is for a {payload.get('total_steps')}-step run; "
                                f"these settings give {total} steps (use the same epochs, max steps and batch size)")

    metrics_fh = open(metrics, "a") if (metrics is not None and ctx.is_main) else None  # noqa: SIM115

    def emit(record: dict[str, Any]) -> None:
        history.append(record)
        if metrics_fh is not None:
            metrics_fh.write(json.dumps(record) + "\n")
            metrics_fh.flush()

    def save(epoch_: int, skip_: int, step_: int) -> None:
        if ckpt_path is None or not ctx.is_main:
            return
        _save_checkpoint(ckpt_path, {
            "format": CHECKPOINT_FORMAT, "model": student.state_dict(), "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(), "scaler": scaler.state_dict(), "rng": _rng_state(dev),
            "epoch": epoch_, "step_in_epoch": skip_, "global_step": step_, "total_steps": total,
            "config": asdict(cfg), "history": history})

    def test_acc(m: nn.Module) -> float | None:
        acc = None
        if test_data is not None and ctx.is_main:
            acc = evaluate(m, test_data, cfg.eval_batch_size, dev, use_amp)
        ctx.barrier()
        return acc

    teacher_acc = None
    if test_data is not None:
        teacher_acc = test_acc(teacher) if cfg.evaluate_teacher else None
        if not resume:
            emit({"event": "start", "step": 0, "student_acc": test_acc(student), "teacher_acc": teacher_acc,
                  "total_steps": total, "world_size": ctx.world_size})

    report = progress if ctx.is_main else None
    if report is not None:
        report(step, total, "")

    t0 = time.time()
    student_acc = None
    taps: FeatureTaps | None = None
    try:
        if cfg.feature_weight > 0:
            names = cfg.feature_layers
            if names is None:
                from ghostify.plan import get_plan

                plan = get_plan(student)
                names = [layer.name for layer in plan.converted] if plan is not None else []
            if not names:
                raise GhostifyError("feature distillation needs converted layers (a ghostify model) or feature_layers")
            taps = FeatureTaps(student, teacher, list(names))

        while step < total and epoch < cfg.epochs:
            sampler.set_epoch(epoch)
            # its own generator: a DataLoader iterator otherwise draws a seed from the global RNG,
            # which would shift dropout's random stream on resume
            loader = DataLoader(train_data, batch_size=per_rank, sampler=_SkipSampler(sampler, skip * per_rank),
                                drop_last=True, num_workers=cfg.num_workers,
                                generator=torch.Generator().manual_seed(cfg.seed + epoch))
            _set_train(model, cfg.freeze_bn)
            for x, y in loader:
                if y.numel() and int(y.max()) >= classes:  # other datasets: each batch, on the CPU
                    raise GhostifyError(f"label {int(y.max())} in the training data, but the model has {classes} "
                                        "outputs: the data has more classes than the model")
                x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
                with torch.no_grad(), torch.autocast(device_type="cuda", dtype=torch.float16, enabled=use_amp):
                    t_logits = teacher(x)
                with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=use_amp):
                    s_logits = model(x)
                loss, kd, ce = distill_loss(s_logits, t_logits, y, cfg.temperature, cfg.alpha)
                feat = 0.0
                if taps is not None:
                    feature_loss = taps.loss()
                    feat = float(feature_loss.detach())
                    loss = loss + cfg.feature_weight * feature_loss
                loss_value = float(loss.detach())
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                sched.step()
                step += 1
                skip += 1
                if not math.isfinite(loss_value):
                    raise GhostifyError(f"the loss became {loss_value} at step {step}", param="lr",
                                        hint="lower the learning rate")
                if report is not None:
                    report(step, total, f"epoch {epoch + 1} loss {loss_value:.3f}")
                if step % cfg.log_every == 0 or step == total:
                    emit({"event": "step", "step": step, "epoch": epoch, "loss": round(loss_value, 5),
                          "kd": round(kd, 5), "ce": round(ce, 5), "feature": round(feat, 5),
                          "lr": sched.get_last_lr()[0], "time_s": round(time.time() - t0, 2)})
                if step in cfg.eval_at_steps and test_data is not None:
                    emit({"event": "eval", "step": step, "epoch": epoch, "student_acc": test_acc(student),
                          "teacher_acc": teacher_acc})
                    _set_train(model, cfg.freeze_bn)
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < total:
                    save(epoch, skip, step)
                if on_step is not None:
                    on_step(step)
                if step >= total:
                    break
            epoch_done = skip >= steps_per_epoch or step >= total
            if epoch_done:
                student_acc = test_acc(student)
                emit({"event": "epoch", "epoch": epoch + 1, "step": step, "student_acc": student_acc,
                      "teacher_acc": teacher_acc, "time_s": round(time.time() - t0, 2)})
                epoch += 1
                skip = 0
                save(epoch, skip, step)
    except KeyboardInterrupt:
        save(epoch, skip, step)  # the interrupted epoch resumes at this step with --resume
        raise
    finally:
        if taps is not None:
            taps.close()
        if metrics_fh is not None:
            metrics_fh.close()
    student.eval()
    return FinetuneResult(steps=step, epochs_done=epoch, student_acc=student_acc, teacher_acc=teacher_acc,
                          history=history, resumed_from=resumed_from)
