"""Distillation fine-tuning: loss, exact resume, metrics, the `ghostify finetune` command."""

from __future__ import annotations

import copy
import gzip
import json
import struct

import numpy as np
import pytest
import torch
from torch import nn

import ghostify
from ghostify.cli.app import main
from ghostify.data.specs import open_data
from ghostify.train import FinetuneConfig, distill_loss, finetune, load_checkpoint


def _teacher() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(8, 4)).eval()


def _data(n: int = 48):
    g = torch.Generator().manual_seed(0)
    return open_data((torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 4, (n,), generator=g)))


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_distill_loss():
    s, t = torch.randn(6, 4), torch.randn(6, 4)
    total, kd, ce = distill_loss(s, s.clone(), None, 4.0, 0.9)
    assert abs(kd) < 1e-6 and ce == 0.0
    labels = torch.tensor([0, 1, -1, 2, -1, 3])  # -1: unlabeled samples take the KD term only
    total, kd, ce = distill_loss(s, t, labels, 2.0, 0.5)
    ref_ce = float(torch.nn.functional.cross_entropy(s[labels >= 0], labels[labels >= 0]))
    assert ce == pytest.approx(ref_ce, rel=1e-5)
    assert float(total) == pytest.approx(0.5 * kd + 0.5 * ce, rel=1e-5)


def test_feature_term_pulls_each_ghost_module_towards_the_conv_it_replaced():
    teacher, data = _teacher(), _data()
    student = ghostify.convert(teacher, s=2, d=3, init="random")
    cfg = FinetuneConfig(epochs=4, batch_size=8, lr=0.05, log_every=1, feature_weight=10.0)
    res = finetune(student, teacher, data, None, cfg)
    feats = [r["feature"] for r in res.history if r["event"] == "step"]
    assert len(feats) == 24 and feats[-1] < 0.5 * feats[0]  # default layers: the plan's converted ones

    same = copy.deepcopy(teacher)  # identical maps: the term is exactly zero
    cfg = FinetuneConfig(max_steps=1, batch_size=8, lr=1e-9, log_every=1, feature_weight=1.0,
                         feature_layers=["0", "3"], freeze_bn=True)  # BN on running statistics, as the teacher
    res = finetune(same, teacher, data, None, cfg)
    assert [r["feature"] for r in res.history if r["event"] == "step"] == [0.0]

    for bad, needle in [({"feature_layers": ["nope"]}, "no module named 'nope'"),
                        ({"feature_weight": -1.0}, "feature weight must be >= 0")]:
        kw = {"feature_weight": 1.0, **bad}
        with pytest.raises(ghostify.GhostifyError, match=needle):
            finetune(copy.deepcopy(student), teacher, data, None, FinetuneConfig(max_steps=1, batch_size=8, **kw))
    with pytest.raises(ghostify.GhostifyError, match="needs converted layers"):  # a plain model has no plan
        cfg = FinetuneConfig(max_steps=1, batch_size=8, feature_weight=1.0)
        finetune(copy.deepcopy(teacher), teacher, data, None, cfg)
    assert all(p.requires_grad for p in teacher.parameters())  # finetune leaves the teacher's flags alone


def test_finetune_gives_the_teacher_back_in_the_modes_it_came_in():
    teacher, data = _teacher(), _data()
    student = ghostify.convert(teacher, s=2, d=3, init="random")
    teacher.train()
    teacher[1].eval()  # a mixed state (say, a frozen BN) must come back as it was, not as train()
    before = {name: m.training for name, m in teacher.named_modules()}
    finetune(student, teacher, data, None, FinetuneConfig(max_steps=1, batch_size=8))
    assert {name: m.training for name, m in teacher.named_modules()} == before
    assert not student.training  # the student is returned ready to evaluate
    with pytest.raises(ghostify.GhostifyError, match="no trainable parameters"):
        frozen = copy.deepcopy(teacher).requires_grad_(False)
        finetune(frozen, teacher, data, None, FinetuneConfig(max_steps=1, batch_size=8))


def test_resume_after_an_interrupted_epoch_gives_the_same_weights(tmp_path):
    teacher = _teacher()
    student0 = ghostify.convert(teacher, s=2, d=3, init="transfer")
    data = _data()
    cfg = FinetuneConfig(epochs=2, batch_size=8, lr=0.05, log_every=1, seed=3)  # 6 steps per epoch

    straight = copy.deepcopy(student0)
    res = finetune(straight, teacher, data, data, cfg, checkpoint=tmp_path / "a.ckpt", metrics=tmp_path / "a.jsonl")
    assert res.steps == 12 and res.epochs_done == 2

    def interrupt(step: int) -> None:
        if step == 9:  # in the middle of the second epoch
            raise KeyboardInterrupt

    broken = copy.deepcopy(student0)
    with pytest.raises(KeyboardInterrupt):
        finetune(broken, teacher, data, data, cfg, checkpoint=tmp_path / "b.ckpt", on_step=interrupt)
    state = load_checkpoint(tmp_path / "b.ckpt")
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (1, 3, 9)
    resumed = copy.deepcopy(student0)  # fresh weights: everything must come from the checkpoint
    res2 = finetune(resumed, teacher, data, data, cfg, checkpoint=tmp_path / "b.ckpt", resume=True)
    assert res2.resumed_from == 9 and res2.steps == 12
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=k)
    assert any(not torch.equal(v, _weights(student0)[k]) for k, v in a.items())  # it did train

    lines = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    epochs = [r for r in lines if r["event"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert all(0 <= r["student_acc"] <= 100 and 0 <= r["teacher_acc"] <= 100 for r in epochs)
    assert sum(r["event"] == "step" for r in lines) == 12


def test_resume_refuses_other_settings_and_missing_checkpoint(tmp_path):
    teacher = _teacher()
    student = ghostify.convert(teacher, s=2, init="random")
    data = _data(16)
    finetune(student, teacher, data, None, FinetuneConfig(epochs=1, batch_size=8), checkpoint=tmp_path / "c.ckpt")
    with pytest.raises(ghostify.GhostifyError, match="steps"):
        finetune(student, teacher, data, None, FinetuneConfig(epochs=3, batch_size=8),
                 checkpoint=tmp_path / "c.ckpt", resume=True)
    with pytest.raises(ghostify.GhostifyError, match="no checkpoint"):
        finetune(student, teacher, data, None, FinetuneConfig(batch_size=8), checkpoint=tmp_path / "none.ckpt",
                 resume=True)
    with pytest.raises(ghostify.GhostifyError, match="fewer than one batch"):
        finetune(student, teacher, data, None, FinetuneConfig(batch_size=64))


def _write_idx(path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def make_cli_fixture(tmp_path):
    """A model file and a tiny Fashion-MNIST-format directory (shared with test_ddp)."""
    rng = np.random.default_rng(0)
    data = tmp_path / "fmnist"
    data.mkdir()
    for prefix, n in (("train", 64), ("t10k", 16)):
        _write_idx(data / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(data / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 4, (n,)))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4)).eval()
    torch.save(model, tmp_path / "teacher.pt")
    return tmp_path / "teacher.pt", data


def test_cli_finetune_never_writes_over_an_input_or_another_output(tmp_path, capsys):
    teacher, data = make_cli_fixture(tmp_path)
    ghost = tmp_path / "t.ghost"
    assert main(["convert", str(teacher), "--input-size", "1,28,28", "--init", "random", "--out", str(ghost),
                 "--no-layers"]) == 0
    existing = tmp_path / "mine.ckpt"
    existing.write_bytes(b"mine")
    before = {p: p.read_bytes() for p in (teacher, ghost, existing)}
    base = ["finetune", str(ghost), "--teacher", str(teacher), "--data", f"fashion-mnist:{data}", "--max-steps", "1",
            "--batch-size", "8", "--out", str(tmp_path / "o.ghost")]
    cases = [(["--checkpoint", str(ghost)], "is also an input"),
             (["--checkpoint", str(teacher)], "is also an input"),
             (["--metrics", str(teacher)], "is also an input"),
             (["--out", str(teacher), "--force"], "is also an input"),
             (["--checkpoint", str(tmp_path / "o.ghost")], "another output"),
             (["--checkpoint", str(tmp_path / "m.jsonl"), "--metrics", str(tmp_path / "m.jsonl")], "another output"),
             (["--checkpoint", str(tmp_path / "nodir" / "c.ckpt")], "does not exist"),
             (["--checkpoint", str(existing)], "pass --resume to continue from it, or --force")]
    for extra, needle in cases:
        assert main(base + extra) == 2, extra
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err, (extra, err)
    assert all(p.read_bytes() == b for p, b in before.items())
    assert not (tmp_path / "o.ghost").exists()


def test_cli_convert_transfer_then_finetune(tmp_path, capsys):
    teacher, data = make_cli_fixture(tmp_path)
    ghost = tmp_path / "t.ghost"
    assert main(["convert", str(teacher), "--input-size", "1,28,28", "--init", "transfer", "--calib",
                 f"fashion-mnist:{data}", "--calib-samples", "16", "--out", str(ghost), "--no-layers"]) == 0
    converted = ghostify.load(ghost)
    assert ghostify.get_plan(converted).init == "transfer"
    out, metrics = tmp_path / "ft.ghost", tmp_path / "m.jsonl"
    rc = main(["finetune", str(ghost), "--teacher", str(teacher), "--data", f"fashion-mnist:{data}", "--epochs", "1",
               "--batch-size", "16", "--out", str(out), "--metrics", str(metrics), "--feature-weight", "0.5"])
    assert rc == 0
    tuned = ghostify.load(out)
    before, after = converted.state_dict(), tuned.state_dict()
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert (tmp_path / "ft.ghost.ckpt").exists()
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    events = [r["event"] for r in records]
    assert "start" in events and "epoch" in events
    assert all(r["feature"] > 0 for r in records if r["event"] == "step")  # the archive's plan names the layers
    # refusing to overwrite, resuming a finished run, and bad input are one-line errors (exit 2)
    assert main(["finetune", str(ghost), "--teacher", str(teacher), "--data", f"fashion-mnist:{data}",
                 "--out", str(out)]) == 2
    assert main(["finetune", str(ghost), "--teacher", str(teacher), "--data", "nope:/x", "--out",
                 str(tmp_path / "x.ghost")]) == 2
    assert main(["finetune", str(ghost), "--teacher", str(teacher), "--data", f"fashion-mnist:{data}",
                 "--feature-weight", "-1", "--out", str(tmp_path / "z.ghost")]) == 2
    assert main(["convert", str(teacher), "--input-size", "1,28,28", "--init", "random", "--calib",
                 f"fashion-mnist:{data}", "--out", str(tmp_path / "y.ghost")]) == 2  # --calib with random init
    err = capsys.readouterr().err
    assert "Traceback" not in err


def test_cli_finetune_bad_values_are_one_line_errors(tmp_path, capsys):
    teacher, data = make_cli_fixture(tmp_path)
    ghost = tmp_path / "t.ghost"
    assert main(["convert", str(teacher), "--input-size", "1,28,28", "--init", "random", "--out", str(ghost),
                 "--no-layers"]) == 0
    wide = tmp_path / "wide"  # ten classes for a model with four outputs
    wide.mkdir()
    rng = np.random.default_rng(1)
    for prefix, n in (("train", 32), ("t10k", 8)):
        _write_idx(wide / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(wide / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    base = ["finetune", str(ghost), "--teacher", str(teacher), "--max-steps", "1", "--batch-size", "8"]
    cases = [(["--data", f"fashion-mnist:{wide}"], "more classes than the model"),
             (["--device", "foo"], "--device must be"),
             (["--weight-decay", "-1"], "weight decay"),
             (["--lr", "nan"], "learning rate"),
             (["--train-samples", "0"], "--train-samples"),
             (["--warmup-steps", "-1"], "warm-up"),
             (["--checkpoint-every", "0"], "checkpoint-every"),
             (["--input-size", "3,28,28"], "rejected an input")]
    for k, (extra, needle) in enumerate(cases):
        args = base + (extra if "--data" in extra else ["--data", f"fashion-mnist:{data}", *extra])
        assert main(args + ["--out", str(tmp_path / f"o{k}.ghost")]) == 2, extra
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, (extra, err)
