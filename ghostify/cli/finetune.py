"""``ghostify finetune``: distill the original model into a converted one (torchrun-ready)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from ghostify._torch import require_torch
from ghostify.cli.app import app, console, err_console
from ghostify.errors import GhostifyError

if TYPE_CHECKING:
    from torch import nn

    from ghostify.data.specs import ImageData
    from ghostify.train import FinetuneResult


def _floats(text: str | None, flag: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise GhostifyError(f"{flag} must be comma-separated numbers (e.g. 0.485,0.456,0.406), got {text!r}") from None


@app.command()
def finetune(
    ghost: Path = typer.Argument(..., help="The converted model: a .ghost archive (from `ghostify convert`)."),
    teacher: str = typer.Option(..., "--teacher", help="The original model SPEC (a file or a named model)."),
    data: str = typer.Option(..., "--data", help="Training data: fashion-mnist:DIR, cifar10:DIR or imagefolder:DIR."),
    test_data: str | None = typer.Option(None, "--test-data", help="Test data (default: the test split of --data)."),
    epochs: int = typer.Option(1, "--epochs", help="Passes over the training data."),
    max_steps: int | None = typer.Option(None, "--max-steps", help="Stop after N optimizer steps."),
    lr: float | None = typer.Option(None, "--lr", help="Peak learning rate (default 0.01 sgd, 1e-3 adamw)."),
    batch_size: int = typer.Option(128, "--batch-size", help="GLOBAL batch size (split over torchrun processes)."),
    optimizer: str = typer.Option("sgd", "--optimizer", help="sgd or adamw."),
    weight_decay: float | None = typer.Option(None, "--weight-decay", help="Default 5e-4 (sgd), 0.05 (adamw)."),
    warmup_steps: int | None = typer.Option(None, "--warmup-steps", help="Linear warm-up (default 5%, ≤ 200)."),
    temperature: float = typer.Option(4.0, "--temperature", help="Distillation temperature T."),
    alpha: float = typer.Option(0.9, "--alpha", help="Weight of the distillation term (1-α on the labels)."),
    feature_weight: float = typer.Option(0.0, "--feature-weight", help="Also pull every Ghost module's output "
                                         "towards the convolution it replaced, with this weight (0: logits only)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output .ghost archive (default GHOST.ft.ghost)."),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="Checkpoint file (default OUT.ckpt)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the checkpoint exactly where it stopped."),
    metrics: Path | None = typer.Option(None, "--metrics", help="Append metrics as JSON lines to this file."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing --out."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    amp: bool = typer.Option(True, "--amp/--no-amp", help="Mixed precision (CUDA only)."),
    freeze_bn: bool = typer.Option(False, "--freeze-bn", help="Keep BatchNorm statistics fixed."),
    seed: int = typer.Option(0, "--seed", help="Seed for the data order and the init of the run."),
    train_samples: int | None = typer.Option(None, "--train-samples", help="Use a fixed random subset of N."),
    checkpoint_every: int | None = typer.Option(None, "--checkpoint-every", help="Also checkpoint every N steps."),
    input_size: str | None = typer.Option(None, "--input-size", help="C,H,W (default: the archive's)."),
    mean: str | None = typer.Option(None, "--mean", help="Normalization mean, e.g. 0.5 or 0.485,0.456,0.406."),
    std: str | None = typer.Option(None, "--std", help="Normalization std."),
    arch: str | None = typer.Option(None, "--arch", help="Architecture SPEC when --teacher is a state_dict."),
    trust: bool = typer.Option(False, "--trust", help="Unpickle arbitrary classes from model files."),
) -> None:
    """Distill --teacher into GHOST (KD + labels), checkpoint per epoch, write a .ghost archive."""
    require_torch("ghostify finetune")
    from ghostify.cli.progress import progress_reporter
    from ghostify.io.specs import load_model
    from ghostify.train import FinetuneConfig
    from ghostify.train import finetune as run_finetune
    from ghostify.train.distributed import is_main_process

    if ghost.suffix != ".ghost":
        raise GhostifyError(f"{ghost}: finetune expects a .ghost archive (make one with `ghostify convert`)")
    out = out or ghost.with_name(f"{ghost.stem}.ft.ghost")
    checkpoint = checkpoint or out.with_name(out.name + ".ckpt")
    _check_outputs(ghost, [teacher, arch, data, test_data], out, checkpoint, metrics, force or resume)
    with err_console.status(f"loading {ghost} and {teacher}"):
        student = load_model(str(ghost), input_size=input_size, trust=trust)
        teacher_m = load_model(teacher, input_size=student.input_size, arch=arch, trust=trust)
    train, test = _open_data(data, test_data, teacher_m.model, student.input_size, _floats(mean, "--mean"),
                             _floats(std, "--std"), train_samples, seed)
    if not train.has_labels and alpha < 1.0 and is_main_process():
        err_console.print("[yellow]note:[/] the training data has no labels: distillation loss only")
    cfg = FinetuneConfig(epochs=epochs, max_steps=max_steps, batch_size=batch_size, lr=lr, optimizer=optimizer,
                         weight_decay=weight_decay, warmup_steps=warmup_steps, temperature=temperature, alpha=alpha,
                         feature_weight=feature_weight, amp=amp, freeze_bn=freeze_bn, seed=seed,
                         checkpoint_every=checkpoint_every)
    with progress_reporter("distilling") as report:
        result = run_finetune(student.model, teacher_m.model, train, test, cfg, checkpoint=checkpoint, resume=resume,
                              metrics=metrics, device=device, progress=report)
    if not is_main_process():
        return
    summary = {"teacher": teacher, "data": data, "steps": result.steps, "epochs": result.epochs_done,
               "student_acc": result.student_acc, "teacher_acc": result.teacher_acc, "config": vars(cfg.resolved())}
    _save(student.model, ghost, out, summary)
    _render(result, ghost)
    console.print(f"saved [bold]{out}[/] after {result.steps} steps; checkpoint {checkpoint}")


def _check_outputs(ghost: Path, specs: list[str | None], out: Path, checkpoint: Path, metrics: Path | None,
                   overwrite: bool) -> None:
    """Every file written is checked before any training: none may be an input (the archive, the
    teacher, --arch, the data) or another output, and an existing checkpoint is only reused with
    --resume or replaced with --force."""
    from ghostify.utils import check_output_path, existing_paths

    inputs = [ghost, *existing_paths(specs)]
    extra = [metrics] if metrics else []
    check_output_path(out, inputs + [checkpoint] + extra, overwrite, param="out")
    check_output_path(checkpoint, inputs + [out] + extra, overwrite, param="checkpoint")
    if metrics is not None:
        check_output_path(metrics, inputs + [out, checkpoint], True, param="metrics")  # appended to


def _open_data(data: str, test_data: str | None, teacher: nn.Module, size: tuple[int, ...],
               mean: tuple[float, ...] | None, std: tuple[float, ...] | None, train_samples: int | None,
               seed: int) -> tuple[ImageData, ImageData | None]:
    """The training set (a fixed subset with --train-samples) and the test set: --test-data, else the
    test split of --data where it has one (a note, not an error, where it has none)."""
    from ghostify.data.specs import open_data
    from ghostify.train.data import training_subset
    from ghostify.train.distributed import is_main_process

    with err_console.status(f"reading {data}"):
        train = open_data(data, train=True, model=teacher, input_size=size, mean=mean, std=std)
        train = training_subset(train, train_samples, seed)
        try:
            test = open_data(test_data or data, train=False, model=teacher, input_size=size, mean=mean, std=std)
        except GhostifyError as exc:
            if test_data is not None:
                raise
            if is_main_process():
                err_console.print(f"[yellow]note:[/] no test accuracy ({exc})")
            test = None
    return train, test


def _save(model: nn.Module, ghost: Path, out: Path, summary: dict[str, Any]) -> None:
    """The fine-tuned weights in GHOST's recipe, with the run's summary (rank 0 only)."""
    from ghostify.io.archive import resave

    model.cpu()
    with err_console.status(f"writing {out}"):
        resave(model, out, ghost, force=True, extra={"finetune": summary})


def _percent(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}%"


def _render(result: FinetuneResult, ghost: Path) -> None:
    """The accuracy at the start, after each epoch and at each extra evaluation."""
    from rich.table import Table

    table = Table(title=f"ghostify finetune: {ghost.name}", header_style="bold", box=None)
    for col in ("epoch", "step", "student acc", "teacher acc"):
        table.add_column(col, justify="right")
    for rec in result.history:
        if rec["event"] in ("start", "epoch", "eval"):
            table.add_row(str(rec.get("epoch", 0)), str(rec["step"]), _percent(rec.get("student_acc")),
                          _percent(rec.get("teacher_acc")))
    console.print(table)
