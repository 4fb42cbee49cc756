"""Transfer init at scale: the one sequential pass, inputs in the model's own format, bounded memory,
progress, and ``--init auto``."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ghostify
from ghostify.cli import main
from ghostify.transfer.refine import RefinePool, _valid_forward

FAST = ghostify.TransferConfig(refine_steps=100, refine_seconds=None)


def tones(n: int, length: int = 512, classes: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw audio frames (N, samples): a noisy tone whose frequency band is the class."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    f = (y.float() + 0.2 + 0.6 * torch.rand(n, generator=g)) * (0.5 / classes)  # cycles per sample
    t = torch.arange(length).float()
    phase = 2 * torch.pi * torch.rand(n, 1, generator=g)
    return torch.sin(2 * torch.pi * f.view(-1, 1) * t + phase) + 1.5 * torch.randn(n, length, generator=g), y


class AudioCNN(nn.Module):
    """Takes (N, samples); (k, 1) kernels; ReLU before BatchNorm."""

    def __init__(self, width: int = 16, classes: int = 8) -> None:
        super().__init__()

        def block(i: int, o: int, k: int) -> list[nn.Module]:
            return [nn.Conv2d(i, o, (k, 1), (2, 1), (k // 2, 0), bias=False), nn.ReLU(), nn.BatchNorm2d(o)]

        self.body = nn.Sequential(*block(1, width, 9), *block(width, 2 * width, 5), *block(2 * width, 2 * width, 5),
                                  *block(2 * width, 4 * width, 3))
        self.head = nn.Linear(4 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x[:, None, :, None]).mean((2, 3)))


class Conv1dCNN(nn.Module):
    """Conv1d -> BatchNorm1d -> ReLU blocks on (N, 1, samples)."""

    def __init__(self, width: int = 16, classes: int = 8) -> None:
        super().__init__()

        def block(i: int, o: int, k: int) -> list[nn.Module]:
            return [nn.Conv1d(i, o, k, 2, k // 2, bias=False), nn.BatchNorm1d(o), nn.ReLU()]

        self.body = nn.Sequential(*block(1, width, 9), *block(width, 2 * width, 5), *block(2 * width, 4 * width, 3))
        self.head = nn.Linear(4 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).mean(2))


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 300) -> nn.Module:
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(steps):
        i = torch.randint(0, x.shape[0], (64,))
        loss = F.cross_entropy(model(x[i]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model(x).argmax(1) == y).float().mean())


@pytest.mark.parametrize("net, shape", [(AudioCNN, None), (Conv1dCNN, "channel")])
def test_audio_model_keeps_its_accuracy_zero_shot_from_calibration_in_its_own_format(net, shape) -> None:
    x, y = tones(2048)
    xt, yt = tones(512, seed=1)
    if shape == "channel":
        x, xt = x[:, None], xt[:, None]
    torch.manual_seed(0)
    model = _train(net(), x, y)
    base = _accuracy(model, xt, yt)
    assert base > 0.9  # a clear accuracy to keep
    ghost = ghostify.convert(model, s=2, d=3, init="transfer", calibration_data=x[:256], transfer=FAST).eval()
    plan = ghostify.get_plan(ghost)
    assert plan.converted and all(layer.transfer_fit == "calibration" for layer in plan.converted)
    random = ghostify.convert(model, s=2, d=3, init="random", seed=0).eval()
    assert _accuracy(ghost, xt, yt) >= 0.9 * base > _accuracy(random, xt, yt)


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                               nn.Conv2d(8, 16, 3, padding=1))
        self.b = nn.Conv2d(1, 16, 3, padding=1)

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return (self.a(image) * torch.sigmoid(self.b(mask))).mean((2, 3))


@pytest.mark.parametrize("form", ["tuple", "dict", "dataset", "loader"])
def test_multi_input_forwards_take_tuples_dicts_datasets_and_loaders(form: str) -> None:
    torch.manual_seed(0)
    model = TwoInputs().eval()
    image, mask = torch.randn(24, 3, 8, 8), torch.randn(24, 1, 8, 8)
    pairs = [((image[i], mask[i]), 0) for i in range(24)]  # a data set's (inputs, label) samples
    data = {"tuple": (image, mask), "dict": {"image": image, "mask": mask}, "dataset": pairs,
            "loader": torch.utils.data.DataLoader(pairs, batch_size=5)}[form]
    ghost = ghostify.convert(model, s=2, init="transfer", calibration_data=data, transfer=FAST)
    info = ghostify.get_plan(ghost).transfer
    assert info["samples"] == 24 and info["fit"] == "calibration"
    assert all(layer.transfer_error is not None for layer in ghostify.get_plan(ghost).converted)


def test_calibration_that_does_not_fit_the_forward_is_one_clear_error() -> None:
    model = TwoInputs().eval()
    with pytest.raises(ghostify.GhostifyError, match="does not give|rejected"):
        ghostify.convert(model, s=2, init="transfer", calibration_data=torch.randn(4, 3, 8, 8))


def _small() -> nn.Sequential:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                      nn.Conv2d(8, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                      nn.Conv2d(16, 16, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))
    m.train()
    with torch.no_grad():  # non-trivial BN statistics
        for _ in range(3):
            m(torch.randn(16, 3, 16, 16))
    return m.eval()


def test_activations_spilled_to_disk_give_the_same_fit() -> None:
    model, x = _small(), torch.randn(40, 3, 16, 16)
    cfg = ghostify.TransferConfig(refine_steps=0, half_storage=False)
    in_memory = ghostify.convert(model, s=2, init="transfer", calibration_data=x, transfer=cfg)
    cfg.memory_bytes = 0  # every activation goes to a file
    on_disk = ghostify.convert(model, s=2, init="transfer", calibration_data=x, transfer=cfg)
    assert ghostify.get_plan(on_disk).transfer["activations_spilled_bytes"] > 0
    assert ghostify.get_plan(in_memory).transfer["activations_spilled_bytes"] == 0
    for a, b in zip(in_memory.state_dict().values(), on_disk.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)


def test_recorded_output_error_is_the_converted_models_real_error() -> None:
    model, x = _small(), torch.randn(32, 3, 16, 16)
    ghost = ghostify.convert(model, s=2, init="transfer", calibration_data=x, transfer=FAST).eval()
    with torch.no_grad():
        y, t = ghost(x), model(x)
    real = float(((y - t) ** 2).sum() / ((t - t.mean(0)) ** 2).sum())
    assert ghostify.get_plan(ghost).transfer["output_error"] == pytest.approx(real, rel=1e-2, abs=1e-4)


@pytest.mark.parametrize("stride", [1, 2])
def test_refinement_crops_compute_exactly_the_crop_of_the_output(stride: int) -> None:
    torch.manual_seed(0)
    ghost = ghostify.GhostModule.from_conv(nn.Conv2d(4, 8, 3, stride, 1), s=2, d=3,
                                           norm=nn.BatchNorm2d(8), act=nn.ReLU()).eval()
    x = torch.randn(3, 4, 64, 64)
    with torch.no_grad():
        full = ghost(x)
    pool = RefinePool(ghost, 3, 8, torch.Generator().manual_seed(0))
    pool.add(x, full)
    assert pool.cropped
    with torch.no_grad():
        got = _valid_forward(ghost, pool.xs[0].float())
    torch.testing.assert_close(got, pool.ts[0].float(), atol=2e-3, rtol=2e-3)  # the pool keeps float16


def test_model_fx_cannot_trace_is_fitted_from_one_hook_pass() -> None:
    class Untraceable(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = _small()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # data-dependent control flow
                x = x * 1.0
            return self.body(x)

    model = Untraceable().eval()
    ghost = ghostify.convert(model, s=2, init="transfer", calibration_data=torch.randn(24, 3, 16, 16))
    plan = ghostify.get_plan(ghost)
    assert plan.mode == "module-swap"
    assert plan.converted and all(layer.transfer_fit == "calibration" for layer in plan.converted)


@pytest.mark.parametrize("suffix", [".npy", ".safetensors", ".pt"])
def test_cli_calib_reads_tensor_files_in_the_models_format(tmp_path, capsys, suffix: str) -> None:
    x, y = tones(512)
    model = _train(AudioCNN(), x, y, steps=50)
    torch.save(model, tmp_path / "audio.pt")
    frames = x[:64]
    path = tmp_path / f"frames{suffix}"
    if suffix == ".npy":
        np.save(path, frames.numpy())
    elif suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({"frames": frames}, str(path))
    else:
        torch.save(frames, path)
    code = main(["convert", str(tmp_path / "audio.pt"), "--trust", "--input-size", "512", "--calib", str(path),
                 "--out", str(tmp_path / "a.ghost"), "--json", str(tmp_path / "a.json"), "--no-layers"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "a.json").read_text())
    assert report["init"] == "transfer" and "trained weights" in report["init_reason"]
    assert "calibrated on tensors from" in report["init_reason"] and report["transfer"]["samples"] == 64


def test_init_auto_keeps_a_files_weights_and_starts_a_bare_name_from_random(tmp_path, capsys) -> None:
    torch.save(_small(), tmp_path / "m.pt")
    assert main(["convert", str(tmp_path / "m.pt"), "--input-size", "3,16,16", "--out", str(tmp_path / "m.ghost"),
                 "--json", str(tmp_path / "m.json"), "--no-layers"]) == 0
    report = json.loads((tmp_path / "m.json").read_text())
    assert report["init"] == "transfer" and report["transfer"]["fit"] == "synthetic"  # data-free: distilled inputs
    assert "model file carries trained weights" in report["init_reason"]
    assert main(["convert", "torchvision:resnet18", "--input-size", "3,32,32", "--out", str(tmp_path / "r.ghost"),
                 "--json", str(tmp_path / "r.json"), "--no-layers"]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["init"] == "random" and "without pretrained weights" in report["init_reason"]
    assert "init" in capsys.readouterr().out  # the report says which init ran


def test_progress_lines_appear_in_a_ci_log(tmp_path) -> None:
    torch.save(_small(), tmp_path / "m.pt")
    run = subprocess.run([sys.executable, "-m", "ghostify", "convert", str(tmp_path / "m.pt"), "--input-size",
                          "3,16,16", "--calib", "synthetic", "--calib-samples", "8", "--out", str(tmp_path / "m.ghost"),
                          "--no-layers"], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)
    assert run.returncode == 0, run.stderr
    lines = [ln for ln in run.stderr.splitlines() if ln.startswith("transfer init:")]
    assert any("distilling inputs" in ln for ln in lines)
    assert any("rel-MSE" in ln for ln in lines)  # a plain line as layers are fitted, with the layer's error
    assert "\r" not in run.stderr and "\x1b[" not in run.stderr  # no redrawn bar in a log
