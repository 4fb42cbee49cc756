"""``ghostify finetune``: distill the original model into a converted one (torchrun-ready)."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from ghostify.cli.app import app, console, err_console
from ghostify.errors import GhostifyError


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
    from rich.table import Table

    from ghostify.cli.progress import progress_reporter
    from ghostify.data.specs import open_data
    from ghostify.io.archive import resave
    from ghostify.io.specs import load_model
    from ghostify.train import FinetuneConfig
    from ghostify.train import finetune as run_finetune
    from ghostify.utils import check_output_path, existing_paths

    main = int(os.environ.get("RANK", "0")) == 0
    if ghost.suffix != ".ghost":
        raise GhostifyError(f"{ghost}: finetune expects a .ghost archive (make one with `ghostify convert`)")
    out = out or ghost.with_name(f"{ghost.stem}.ft.ghost")
    checkpoint = checkpoint or out.with_name(out.name + ".ckpt")
    # every file written here is checked before any training: none may be an input (the archive,
    # the teacher, --arch, the data) or another output, and an existing checkpoint is only
    # reused with --resume or replaced with --force
    inputs = [ghost, *existing_paths([teacher, arch, data, test_data])]
    check_output_path(out, inputs + [checkpoint] + ([metrics] if metrics else []), force or resume, param="out")
    check_output_path(checkpoint, inputs + [out] + ([metrics] if metrics else []), force or resume,
                      param="checkpoint")
    if metrics is not None:
        check_output_path(metrics, inputs + [out, checkpoint], True, param="metrics")  # appended to
    with err_console.status(f"loading {ghost} and {teacher}"):
        student = load_model(str(ghost), input_size=input_size, trust=trust)
        size = student.input_size
        teacher_m = load_model(teacher, input_size=size, arch=arch, trust=trust)
    m, s = _floats(mean, "--mean"), _floats(std, "--std")
    with err_console.status(f"reading {data}"):
        train = open_data(data, train=True, model=teacher_m.model, input_size=size, mean=m, std=s)
        if train_samples is not None:
            train = train.subset(train_samples, seed)
        test = None
        try:
            test = open_data(test_data or data, train=False, model=teacher_m.model, input_size=size, mean=m, std=s)
        except GhostifyError as exc:
            if test_data is not None:
                raise
            if main:
                err_console.print(f"[yellow]note:[/] no test accuracy ({exc})")
    if not train.has_labels and alpha < 1.0 and main:
        err_console.print("[yellow]note:[/] the training data has no labels: distillation loss only")
    from ghostify.forward import check_forward

    if train_samples is not None and train_samples < 1:
        raise GhostifyError(f"--train-samples must be >= 1, got {train_samples}")
    ys, yt = check_forward(student.model, size), check_forward(teacher_m.model, size)  # one-line errors
    if ys.shape != yt.shape:
        raise GhostifyError(f"student output {tuple(ys.shape)} and teacher output {tuple(yt.shape)} differ: "
                            "is --teacher the model GHOST was converted from?")
    if yt.dim() != 2:
        raise GhostifyError(f"the teacher's output has shape {tuple(yt.shape)}; distillation needs class logits "
                            "(batch, classes)")
    cfg = FinetuneConfig(epochs=epochs, max_steps=max_steps, batch_size=batch_size, lr=lr, optimizer=optimizer,
                         weight_decay=weight_decay, warmup_steps=warmup_steps, temperature=temperature, alpha=alpha,
                         feature_weight=feature_weight, amp=amp, freeze_bn=freeze_bn, seed=seed,
                         checkpoint_every=checkpoint_every)
    with progress_reporter("distilling") as report:
        result = run_finetune(student.model, teacher_m.model, train, test, cfg, checkpoint=checkpoint, resume=resume,
                              metrics=metrics, device=device, progress=report)
    if not main:
        return
    student.model.cpu()
    summary = {"teacher": teacher, "data": data, "steps": result.steps, "epochs": result.epochs_done,
               "student_acc": result.student_acc, "teacher_acc": result.teacher_acc, "config": vars(cfg.resolved())}
    with err_console.status(f"writing {out}"):
        resave(student.model, out, ghost, force=True, extra={"finetune": summary})
    table = Table(title=f"ghostify finetune: {ghost.name}", header_style="bold", box=None)
    for col in ("epoch", "step", "student acc", "teacher acc"):
        table.add_column(col, justify="right")
    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}%"

    for rec in result.history:
        if rec["event"] in ("start", "epoch", "eval"):
            table.add_row(str(rec.get("epoch", 0)), str(rec["step"]), fmt(rec.get("student_acc")),
                          fmt(rec.get("teacher_acc")))
    console.print(table)
    console.print(f"saved [bold]{out}[/] after {result.steps} steps; checkpoint {checkpoint}")
