"""Ghost modules in 1-D and 3-D: the pass, the report, the deployment form and ONNX export.

A small Conv1d network (audio/sensor style) and torchvision's video ResNet ``r3d_18`` at a
tiny clip (3 channels, 4 frames, 32x32) to keep the test fast.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

import ghostify
from ghostify.cli import main
from ghostify.export.onnx import export_onnx
from ghostify.io.specs import parse_input_size
from ghostify.layers.ghost import GhostModule
from ghostify.report.render import render_report
from ghostify.report.report import build_report

CLIP = (3, 4, 32, 32)


def net1d() -> nn.Module:
    """Conv1d → BN1d → ReLU three times, global average pooling, Linear."""
    layers: list[nn.Module] = []
    c = 4
    for n in (16, 32, 64):
        layers += [nn.Conv1d(c, n, 5, stride=2, padding=2, bias=False), nn.BatchNorm1d(n), nn.ReLU()]
        c = n
    return nn.Sequential(*layers, nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(c, 10)).eval()


def _ghosts(model: nn.Module) -> list[GhostModule]:
    return [m for m in model.modules() if isinstance(m, GhostModule)]


@pytest.fixture(scope="module")
def r3d():
    torch.manual_seed(0)
    model = torchvision.models.video.r3d_18().eval()
    return model, ghostify.convert(model).eval()


def test_conv1d_network_converts_and_keeps_its_shape():
    model = net1d()
    ghost = ghostify.convert(model).eval()
    ghosts = _ghosts(ghost)
    assert len(ghosts) == 2  # the stem (reads the signal) is kept, as in 2-D
    for g in ghosts:
        assert type(g.primary_conv[0]) is nn.Conv1d and type(g.cheap_operation[0]) is nn.Conv1d
        assert g.cheap_operation[0].kernel_size == (3,) and isinstance(g.primary_conv[1], nn.BatchNorm1d)
    x = torch.randn(2, 4, 128)
    assert ghost(x).shape == model(x).shape == (2, 10)


def test_r3d_18_converts_with_3d_ghost_modules(r3d):
    model, ghost = r3d
    ghosts = _ghosts(ghost)
    # its Conv3DSimple convolutions keep nn.Conv3d's forward: they convert (all but the stem)
    plan = ghostify.get_plan(ghost)
    assert len(ghosts) == len(plan.converted) == len(plan.layers) - 1 == 19
    for g in ghosts:
        assert isinstance(g.primary_conv[0], nn.Conv3d) and type(g.cheap_operation[0]) is nn.Conv3d
        assert g.cheap_operation[0].kernel_size == (3, 3, 3)
    x = torch.randn(1, *CLIP)
    with torch.no_grad():
        assert ghost(x).shape == model(x).shape == (1, 400)


@pytest.mark.parametrize("conv", [nn.Conv1d(8, 16, 5, stride=2, padding=2),
                                  nn.Conv3d(8, 16, (1, 3, 3), padding=(0, 1, 1))], ids=["1d", "3d"])
def test_s1_ghost_module_is_the_convolution_itself(conv):
    norm = (nn.BatchNorm1d if isinstance(conv, nn.Conv1d) else nn.BatchNorm3d)(16).eval()
    with torch.no_grad():
        norm.running_mean.normal_()
        norm.running_var.uniform_(0.5, 2)
    ghost = GhostModule.from_conv(conv, s=1, norm=norm, act=nn.ReLU()).eval()
    x = torch.randn(2, 8, *([20] if isinstance(conv, nn.Conv1d) else [3, 10, 10]))
    with torch.no_grad():
        torch.testing.assert_close(ghost(x), torch.relu(norm(conv(x))), rtol=0, atol=0)


def test_report_shows_1d_and_3d_sizes(r3d):
    import io

    from rich.console import Console

    model = net1d()
    rep = build_report(model, ghostify.convert(model), (4, 128), "net1d")
    rows = {r.name: r for r in rep.layers}
    assert rows["3"].out_hw == [32] and rows["3"].k == [5] and rows["3"].stride == [2]
    assert rows["3"].macs_after < rows["3"].macs_before
    original, ghost = r3d
    rep3 = build_report(original, ghost, CLIP, "r3d_18")
    rows3 = {r.name: r for r in rep3.layers}
    assert rows3["layer2.0.conv1.0"].out_hw == [2, 8, 8]
    assert rep3.totals["theoretical_speedup"] == pytest.approx(rep3.totals["measured_speedup"], rel=1e-3)
    for report, header, cell in ((rep, "L'", " 32 "), (rep3, "t'×h'×w'", "2×8×8")):
        buf = io.StringIO()
        render_report(report, Console(file=buf, width=160, force_terminal=False))
        text = buf.getvalue()
        assert header in text and cell in text


def test_deployment_form_equals_training_form():
    model = net1d()
    ghost = ghostify.convert(model).eval()
    x = torch.randn(3, 4, 64)
    with torch.no_grad():
        torch.testing.assert_close(ghostify.deploy(ghost)(x), ghost(x), rtol=1e-5, atol=1e-5)


def test_deployment_form_of_r3d_18(r3d):
    _, ghost = r3d
    x = torch.randn(1, *CLIP)
    deployed = ghostify.deploy(ghost)
    with torch.no_grad():
        torch.testing.assert_close(deployed(x), ghost(x), rtol=1e-4, atol=1e-5)
    # the residual Adds' identity convolutions are 3-D (they were 2-D, which broke the forward)
    assert not any(isinstance(m, (nn.Conv1d, nn.Conv2d)) for m in deployed.modules())
    # and take the model's dtype (they were float32 whatever the model)
    g64 = copy.deepcopy(ghost).double()
    with torch.no_grad():
        torch.testing.assert_close(ghostify.deploy(g64)(x.double()), g64(x.double()), rtol=1e-9, atol=1e-12)


def test_onnx_export_of_a_1d_network(tmp_path):
    ghost = ghostify.convert(net1d())
    result = export_onnx(ghost, tmp_path / "n1.onnx", (4, 128))
    assert result.passed and result.max_rel_error <= 1e-4 and result.input_size == (4, 128)


def test_onnx_export_of_r3d_18_at_a_tiny_clip(r3d, tmp_path):
    _, ghost = r3d
    result = export_onnx(ghost, tmp_path / "r3d.onnx", CLIP, exporter="torchscript")
    assert result.passed and result.max_rel_error <= 1e-4


def test_input_sizes_of_every_dimensionality():
    assert parse_input_size("4,128") == (4, 128)
    assert parse_input_size("3,224,224") == (3, 224, 224)
    assert parse_input_size("3x8x112x112") == (3, 8, 112, 112)
    assert parse_input_size("1024") == (1024,)  # raw frames: forward takes (N, L)
    with pytest.raises(ghostify.GhostifyError, match="1 to 4 positive integers"):
        parse_input_size("1,2,3,4,5")
    with pytest.raises(ghostify.GhostifyError, match="1 to 4 positive integers"):
        parse_input_size("3,0,4")
    # a video model's default input is a clip, not an image
    assert ghostify.load_model("torchvision:r3d_18").input_size == (3, 16, 112, 112)


def test_cli_converts_a_video_model(tmp_path, capsys):
    out = tmp_path / "r3d.ghost"
    rc = main(["convert", "torchvision:r3d_18", "--input-size", "3,4,32,32", "--out", str(out), "--no-layers"])
    assert rc == 0, capsys.readouterr().err
    back = ghostify.load(out)
    assert len(_ghosts(back)) == 19 and back(torch.randn(1, *CLIP)).shape == (1, 400)
