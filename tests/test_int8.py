"""int8 export: onnxruntime's quantizer behind export_onnx(quantize=...), the int8 check, its gate.

Small models and inputs only: figures of real models are bench/int8.py's business.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import ghostify
from ghostify.cli import main
from ghostify.cli.errors import cli_message
from ghostify.errors import GhostifyError, QuantizationError
from ghostify.export import export_onnx
from ghostify.export.quantize import QuantizeConfig
from ghostify.gates import read_figures

SIZE = (3, 16, 16)


def _cnn(c_in: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(c_in, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)).eval()


@pytest.fixture(scope="module")
def ghost() -> nn.Module:
    return ghostify.convert(_cnn(), 2, 3).eval()


def _inputs(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, *SIZE, generator=torch.Generator().manual_seed(seed))


def test_sane_quantization_passes_and_is_int8_with_float_logits(tmp_path, ghost):
    res = export_onnx(ghost, tmp_path / "m.onnx", SIZE, quantize=QuantizeConfig(_inputs(96), calibration_samples=32))
    assert res.passed and res.written
    int8 = res.int8
    assert int8["calib_samples"] == 32 and int8["check_samples"] == 64 and int8["check_inputs"] == "held-out"
    assert int8["agreement"] >= 98.0 and int8["rel_error"] <= 0.05 and not int8["failures"]
    assert int8["accuracy_drop"] is None  # no labels
    proto = onnx.load(str(tmp_path / "m.onnx"))
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("DequantizeLinear") >= 4 and "QuantizeLinear" in ops
    producer = {o: n for n in proto.graph.node for o in n.output}
    assert producer[proto.graph.output[0].name].op_type == "Gemm"  # the logits are not re-quantized


def test_bad_calibration_fails_the_check_and_leaves_no_file(tmp_path, ghost):
    # one low-contrast sample: every range is far too narrow for the held-out inputs
    bad = QuantizeConfig(_inputs(1) * 0.02, calibration_samples=1, check_data=_inputs(64, seed=2))
    res = export_onnx(ghost, tmp_path / "bad.onnx", SIZE, quantize=bad)
    assert res.passed is False and not res.written and not (tmp_path / "bad.onnx").exists()
    assert res.int8["failures"] and res.int8["rel_error"] > 0.05
    assert any("1 inputs only" in n for n in res.int8["notes"])
    kept = export_onnx(ghost, tmp_path / "bad.onnx", SIZE, quantize=bad, keep_failed=True)
    assert kept.written and (tmp_path / "bad.onnx").exists()


def test_calibration_data_is_validated(tmp_path, ghost):
    with pytest.raises(GhostifyError, match="needs >= 16") as err:
        export_onnx(ghost, tmp_path / "m.onnx", SIZE, quantize=QuantizeConfig(_inputs(8)))
    assert err.value.param == "calibration_samples"
    x = _inputs(40)
    x[3, 0, 0, 0] = float("inf")
    with pytest.raises(GhostifyError, match="non-finite"):
        export_onnx(ghost, tmp_path / "m.onnx", SIZE, quantize=QuantizeConfig(x))
    with pytest.raises(GhostifyError, match="per sample"):
        export_onnx(ghost, tmp_path / "m.onnx", SIZE, quantize=QuantizeConfig(torch.randn(40, 3, 8, 8)))
    assert not (tmp_path / "m.onnx").exists()


def test_keep_float_matches_torch_module_names(tmp_path, ghost):
    res = export_onnx(ghost, tmp_path / "m.onnx", SIZE,
                      quantize=QuantizeConfig(_inputs(48), calibration_samples=16, keep_float=("*cheap*",)))
    assert res.passed and res.int8["kept_float_nodes"]
    proto = onnx.load(str(tmp_path / "m.onnx"))
    inits = {i.name for i in proto.graph.initializer}
    kept = [n for n in proto.graph.node if n.name in res.int8["kept_float_nodes"] and n.op_type == "Conv"]
    assert kept and all(n.input[1] in inits for n in kept)  # a float weight, no DequantizeLinear before it
    quantized = [n for n in proto.graph.node if n.op_type == "Conv" and n.name not in res.int8["kept_float_nodes"]]
    assert quantized and all(n.input[1] not in inits for n in quantized)


class _GroupedTranspose(nn.Module):
    """onnxruntime's per-channel quantizer cannot handle a grouped ConvTranspose's bias."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.up = nn.ConvTranspose2d(8, 8, 3, groups=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.conv(x)).mean((2, 3))


def test_a_model_the_quantizer_cannot_handle_names_the_node(tmp_path):
    with pytest.raises(QuantizationError) as err:
        export_onnx(_GroupedTranspose().eval(), tmp_path / "m.onnx", SIZE, quantize=QuantizeConfig(_inputs(20)))
    assert "ConvTranspose" in str(err.value) and err.value.node and err.value.keep == "up"
    line = cli_message(err.value)
    assert "\n" not in line and "--int8-keep-float up" in line
    res = export_onnx(_GroupedTranspose().eval(), tmp_path / "m.onnx", SIZE,
                      quantize=QuantizeConfig(_inputs(40), keep_float=("up",)))
    assert res.written and res.int8["kept_float_nodes"]


def test_cli_int8_export_on_labelled_data_and_the_accuracy_gate(tmp_path, capsys, monkeypatch):
    from ghostify.export import quantize

    monkeypatch.setattr(quantize, "needs_reduce_range", lambda isa=None: False)  # as on a VNNI CPU
    model = tmp_path / "cnn.pt"
    torch.save(_cnn(1), model)
    out, report = tmp_path / "cnn.int8.onnx", tmp_path / "export.json"
    code = main(["export", str(model), "--input-size", "1,28,28", "--onnx", str(out), "--int8", "--calib",
                 "fashion-mnist", "--calib-samples", "16", "--int8-check-samples", "48", "--int8-min-agreement", "50",
                 "--int8-reduce-range", "--json", str(report)])  # exporting for a CPU without VNNI
    assert code == 0, capsys.readouterr().err
    data = json.loads(report.read_text())
    int8 = data["int8"]
    assert int8["calib_samples"] == 16 and int8["check_samples"] == 48 and "--int8" in data["command"]
    assert int8["reduce_range"] is True  # the flag wins over this CPU's choice
    assert int8["accuracy_drop"] == pytest.approx(int8["accuracy_fp32"] - int8["accuracy_int8"])
    assert read_figures(report)["accuracy_drop"] == pytest.approx(int8["accuracy_drop"])
    assert main(["check", str(report), "--max-accuracy-drop", "100"]) == 0
    assert main(["check", str(report), "--max-accuracy-drop", "-100"]) == 1


def test_cli_int8_usage_errors(tmp_path, capsys):
    model = tmp_path / "cnn.pt"
    torch.save(_cnn(), model)
    calib = tmp_path / "calib.npy"
    np.save(calib, np.full((4, *SIZE), np.nan, dtype=np.float32))
    cases = [(["--int8"], "needs calibration data"), (["--calib", str(calib)], "add --int8"),
             (["--int8-full-range"], "add --int8"),
             (["--int8", "--calib", str(calib), "--calib-samples", "4"], "non-finite"),
             (["--int8", "--calib", str(calib), "--int8-method", "kl"], "--int8-method must be one of")]
    for extra, message in cases:
        code = main(["export", str(model), "--input-size", "3,16,16", "--onnx", str(tmp_path / "m.onnx"), *extra])
        err = capsys.readouterr().err
        assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "m.onnx").exists()


def test_an_int8_report_without_labels_has_no_accuracy_figure(tmp_path):
    path = tmp_path / "e.json"
    path.write_text(json.dumps({"kind": "export", "int8": {"agreement": 99.0, "accuracy_drop": None}}))
    with pytest.raises(GhostifyError, match="no figure to gate on"):
        read_figures(path)


def test_reduce_range_only_where_x86_kernels_lack_vnni():
    from ghostify.export.quantize import needs_reduce_range

    assert needs_reduce_range(["sse4_2", "avx", "avx2", "fma"])  # AVX2 only: 16-bit pair sums can saturate
    assert not needs_reduce_range(["avx2", "avx512f", "avx512_vnni"])
    assert not needs_reduce_range(["avx2", "avx_vnni"])
