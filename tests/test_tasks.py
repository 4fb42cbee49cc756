"""Detection and segmentation models: built offline, fed in their own convention, converted, reported, exported.

torchvision's detectors take a list of (C, H, W) images and return a list of dicts; its
segmentation models take a batch and return a dict (``out``, ``aux``). Both used to download
their ImageNet backbone when built. Every test here runs offline (the ``offline`` fixture).
"""

from __future__ import annotations

import json
import zipfile

import pytest
import torch

import ghostify
from ghostify.cli import main
from ghostify.export.onnx import export_onnx
from ghostify.forward import IMAGES, check_forward, describe_output, example_input, input_convention
from ghostify.report.counting import _count_hooks, count_macs

DETECTOR = "torchvision:fasterrcnn_mobilenet_v3_large_320_fpn"
SEGMENTER = "torchvision:deeplabv3_mobilenet_v3_large"


@pytest.fixture(scope="module")
def deeplab():
    """(original, converted) DeepLabV3, built once for the module (no backbone download: it would fail)."""
    loaded = ghostify.load_model(SEGMENTER)
    return loaded.model, ghostify.convert(loaded.model)


def test_detector_takes_a_list_of_images_and_counts_per_image(offline):
    model = ghostify.load_model(DETECTOR).model
    assert input_convention(model) == IMAGES
    x = example_input(model, (3, 64, 64))
    assert isinstance(x, list) and len(x) == 1 and x[0].shape == (3, 64, 64)
    # the RoI box head's fc6 runs once per proposal: counted per image, not per row of its output
    with torch.no_grad():
        proposals, _ = model.rpn(*model.transform(x)[:1], model.backbone(model.transform(x)[0].tensors))
    fc6 = model.roi_heads.box_head.fc6
    expected = proposals[0].shape[0] * fc6.in_features * fc6.out_features
    fvcore, hooks = count_macs(model, x), _count_hooks(model, x)
    assert fvcore.counter == "fvcore" and fvcore.by_module["roi_heads.box_head.fc6"] == expected
    assert hooks.by_module["roi_heads.box_head.fc6"] == expected and hooks.total == fvcore.total


def test_cli_converts_a_detector_offline(offline, tmp_path, capsys):
    out, report = tmp_path / "det.ghost", tmp_path / "det.json"
    rc = main(["convert", DETECTOR, "--out", str(out), "--json", str(report), "--no-layers"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    data = json.loads(report.read_text())
    assert data["mode"] == "module-swap" and data["totals"]["layers_converted"] >= 50 and data["weights"] is None
    recipe = json.loads(zipfile.ZipFile(out).read("recipe.json"))
    assert recipe["output_shape"] == "[{boxes: (N, 4), labels: (N,), scores: (N,)}]"
    back = ghostify.load(out)  # rebuilt offline too
    y = check_forward(back, (3, 64, 64))
    assert describe_output(y, IMAGES) == recipe["output_shape"]
    assert sum(isinstance(m, ghostify.GhostModule) for m in back.modules()) == data["totals"]["layers_converted"]


def test_segmentation_model_keeps_its_output_dict(offline, deeplab):
    original, ghost = deeplab
    y0, y1 = check_forward(original, (3, 64, 64)), check_forward(ghost, (3, 64, 64))
    assert describe_output(y0) == describe_output(y1) == "{out: (1, 21, 64, 64)}"
    report = ghostify.build_report(original, ghost, (3, 64, 64), SEGMENTER)
    assert report.totals["layers_converted"] >= 50 and report.totals["measured_speedup"] > 1.5


def test_segmentation_model_exports_with_parity(offline, deeplab, tmp_path):
    _, ghost = deeplab
    result = export_onnx(ghost, tmp_path / "seg.onnx", (3, 64, 64))
    assert result.passed and result.max_rel_error <= 1e-4, result


def test_cli_converts_a_segmentation_model_offline(offline, tmp_path, capsys):
    out = tmp_path / "seg.ghost"
    rc = main(["convert", SEGMENTER, "--input-size", "3,64,64", "--out", str(out), "--no-layers"])
    assert rc == 0, capsys.readouterr().err
    recipe = json.loads(zipfile.ZipFile(out).read("recipe.json"))
    assert recipe["output_shape"] == "{out: (1, 21, 64, 64)}" and recipe["mode"] == "fx"


def test_a_parity_check_of_empty_outputs_says_it_compared_nothing(tmp_path):
    # a detector with random weights returns no box above its score threshold: such a "pass" says nothing
    class NothingFound(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return y[y > 1e9]

    result = export_onnx(NothingFound().eval(), tmp_path / "e.onnx", (3, 8, 8), exporter="torchscript")
    assert result.passed and result.compared_values == 0
    ok = export_onnx(torch.nn.Conv2d(3, 4, 3).eval(), tmp_path / "c.onnx", (3, 8, 8), exporter="torchscript")
    assert ok.compared_values == 4 * 6 * 6
