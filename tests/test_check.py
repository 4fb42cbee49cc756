"""``ghostify check``: exit 0 when the gates hold, 1 when one fails, 2 for a bad report (issue 6)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from ghostify.cli import main
from ghostify.errors import GhostifyError
from ghostify.gates import read_figures, run_gates


def write(tmp_path: Path, name: str, obj) -> Path:
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


def convert_report(macs=(4_000, 2_000), params=(1_000, 600)) -> dict:
    return {"schema": "ghostify.report/1", "kind": "convert",
            "totals": {"macs_before": macs[0], "macs_after": macs[1], "params_before": params[0],
                       "params_after": params[1], "theoretical_speedup": 2.0, "measured_speedup": 2.0}}


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(["check", *args])
    out, err = capsys.readouterr()
    return rc, out, err


# -- figures ----------------------------------------------------------------------------------
def test_reduction_is_before_over_after(tmp_path):
    figures = read_figures(write(tmp_path, "r.json", convert_report(macs=(4_000, 2_000), params=(1_000, 600))))
    assert figures["macs_reduction"] == pytest.approx(2.0)
    assert figures["params_reduction"] == pytest.approx(1_000 / 600)


@pytest.mark.parametrize("obj", [
    {"latency_ratio": 0.8},
    {"kind": "bench", "latency": {"latency_ratio": 0.8, "median_ms": 1.0}},
    {"totals": {"latency_ratio": 0.8}},
])
def test_latency_ratio_locations(tmp_path, obj):
    assert read_figures(write(tmp_path, "b.json", obj))["latency_ratio"] == pytest.approx(0.8)


@pytest.mark.parametrize("obj, drop", [
    ({"accuracy_drop": 1.25}, 1.25),
    ({"student_acc": 90.0, "teacher_acc": 92.5}, 2.5),
    ({"finetune": {"student_acc": 93.0, "teacher_acc": 92.0}}, -1.0),
])
def test_accuracy_drop_forms(tmp_path, obj, drop):
    assert read_figures(write(tmp_path, "f.json", obj))["accuracy_drop"] == pytest.approx(drop)


def test_finetune_metrics_jsonl_uses_last_evaluation(tmp_path):
    lines = [{"event": "start", "step": 0, "student_acc": 10.0, "teacher_acc": 91.0},
             {"event": "step", "step": 10, "loss": 1.2},
             {"event": "epoch", "step": 20, "student_acc": 89.0, "teacher_acc": 91.0},
             {"event": "step", "step": 30, "loss": 0.9}]
    path = write(tmp_path, "m.jsonl", "\n".join(json.dumps(r) for r in lines) + "\n")
    assert read_figures(path)["accuracy_drop"] == pytest.approx(2.0)


def test_real_convert_report_and_archive(tmp_path, capsys):
    import sys

    (tmp_path / "check_tiny_models.py").write_text(
        "from torch import nn\n"
        "def net():\n"
        "    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),\n"
        "                         nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),\n"
        "                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))\n")
    sys.path.insert(0, str(tmp_path))
    try:
        rc = main(["convert", "check_tiny_models:net", "--input-size", "3,16,16", "--out", str(tmp_path / "m.ghost"),
                   "--json", str(tmp_path / "r.json"), "--no-layers"])
    finally:
        sys.path.remove(str(tmp_path))
    capsys.readouterr()
    assert rc == 0
    report = json.loads((tmp_path / "r.json").read_text())
    expected = report["totals"]["macs_before"] / report["totals"]["macs_after"]
    assert expected > 1.0
    for path in (tmp_path / "r.json", tmp_path / "m.ghost"):  # the archive's recipe carries the same totals
        assert read_figures(path)["macs_reduction"] == pytest.approx(expected)
    rc, _, err = run_cli(capsys, str(tmp_path / "r.json"), "--min-macs-reduction", f"{expected * 0.99:.6f}")
    assert rc == 0, err
    rc, _, err = run_cli(capsys, str(tmp_path / "m.ghost"), "--min-macs-reduction", f"{expected * 1.01:.6f}")
    assert rc == 1, err


# -- gates: exit 0 / 1 --------------------------------------------------------------------------
def test_all_gates_hold_exit_0(tmp_path, capsys):
    r = write(tmp_path, "r.json", convert_report())
    b = write(tmp_path, "b.json", {"latency_ratio": 0.7})
    f = write(tmp_path, "f.json", {"student_acc": 91.0, "teacher_acc": 92.0})
    rc, out, err = run_cli(capsys, str(r), str(b), str(f), "--min-macs-reduction", "1.9", "--min-params-reduction",
                           "1.5", "--max-latency-ratio", "0.8", "--max-accuracy-drop", "1.5")
    assert rc == 0, err
    assert err == ""
    assert out.count("ok") == 4


def test_threshold_is_inclusive(tmp_path, capsys):
    r = write(tmp_path, "r.json", convert_report(macs=(4_000, 2_000)))
    rc, _, err = run_cli(capsys, str(r), "--min-macs-reduction", "2.0")
    assert rc == 0, err
    f = write(tmp_path, "f.json", {"accuracy_drop": 1.0})
    rc, _, err = run_cli(capsys, str(f), "--max-accuracy-drop", "1.0")
    assert rc == 0, err


@pytest.mark.parametrize("flag, value, needle", [
    ("--min-macs-reduction", "2.5", "MACs reduction"),
    ("--min-params-reduction", "2", "params reduction"),
    ("--max-latency-ratio", "0.5", "latency ratio"),
    ("--max-accuracy-drop", "0.5", "accuracy drop"),
])
def test_one_failing_gate_exit_1_names_figure_and_threshold(tmp_path, capsys, flag, value, needle):
    r = write(tmp_path, "r.json", convert_report())
    b = write(tmp_path, "b.json", {"latency_ratio": 0.7})
    f = write(tmp_path, "f.json", {"student_acc": 91.0, "teacher_acc": 92.0})
    rc, out, err = run_cli(capsys, str(r), str(b), str(f), flag, value)
    assert rc == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "gate failed" in lines[0] and needle in lines[0]
    assert flag in lines[0] and value in lines[0]  # the threshold
    assert "Traceback" not in err
    assert "FAILED" in out


def test_one_fails_one_holds(tmp_path, capsys):
    r = write(tmp_path, "r.json", convert_report(macs=(4_000, 2_000), params=(1_000, 900)))
    rc, out, err = run_cli(capsys, str(r), "--min-macs-reduction", "1.5", "--min-params-reduction", "1.5")
    assert rc == 1
    assert "params reduction" in err and "MACs" not in err
    assert "2×" in out and "1.111×" in out  # the figures, as measured


def test_later_report_wins(tmp_path):
    a = write(tmp_path, "a.json", {"latency_ratio": 2.0})
    b = write(tmp_path, "b.json", {"latency_ratio": 0.5})
    [result] = run_gates([a, b], {"latency_ratio": 1.0})
    assert result.passed and result.value == 0.5 and result.source == str(b)


# -- bad reports and usage: exit 2, one line ---------------------------------------------------------
BAD_REPORTS = [
    ("missing", None, "no such file"),
    ("empty", "", "empty"),
    ("blank", "   \n\n", "empty"),
    ("garbage", "\x00\x01\xff\xfe binary", "not"),
    ("not-json", "{totals: 1", "not valid JSON"),
    ("array", "[1, 2, 3]", "expected an object"),
    ("string", '"hello"', "expected an object"),
    ("totals-not-object", {"totals": [1, 2]}, "'totals' is not an object"),
    ("macs-zero", {"totals": {"macs_before": 10, "macs_after": 0}}, "must be > 0"),
    ("macs-negative", {"totals": {"macs_before": -10, "macs_after": 5}}, "must be > 0"),
    ("macs-string", {"totals": {"macs_before": "10", "macs_after": 5}}, "not a finite number"),
    ("macs-bool", {"totals": {"macs_before": True, "macs_after": 5}}, "not a finite number"),
    ("macs-nan", '{"totals": {"macs_before": NaN, "macs_after": 5}}', "not a finite number"),
    ("macs-inf", '{"totals": {"macs_before": Infinity, "macs_after": 5}}', "not a finite number"),
    ("macs-half", {"totals": {"macs_before": 10}}, "has no 'macs_after'"),
    ("no-figures", {"kind": "sweep", "rows": []}, "no figure to gate on"),
    ("latency-zero", {"latency_ratio": 0}, "must be > 0"),
    ("accuracy-string", {"student_acc": "high", "teacher_acc": 90}, "not a finite number"),
    ("jsonl-bad-line", '{"a": 1}\n{oops\n', "line 2"),
    ("deep", "[" * 100_000 + "]" * 100_000, "JSON"),
]


@pytest.mark.parametrize("name, content, needle", BAD_REPORTS, ids=[b[0] for b in BAD_REPORTS])
def test_bad_report_exit_2_one_line(tmp_path, capsys, name, content, needle):
    path = tmp_path / f"{name}.json"
    if content is not None:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    rc, out, err = run_cli(capsys, str(path), "--min-macs-reduction", "1", "--max-latency-ratio", "1",
                           "--max-accuracy-drop", "1")
    assert rc == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ghostify: error:"), err
    assert needle.lower() in lines[0].lower(), lines[0]
    assert "Traceback" not in err


@pytest.mark.parametrize("args, needle", [
    ([], "no gate given"),
    (["--min-macs-reduction", "0"], "must be > 0"),
    (["--min-macs-reduction", "-1"], "must be > 0"),
    (["--min-macs-reduction", "nan"], "finite"),
    (["--min-macs-reduction", "abc"], "--min-macs-reduction"),
    (["--max-latency-ratio", "1"], "latency ratio"),  # a convert report has no latency figure
    (["--max-accuracy-drop", "1"], "accuracy drop"),
    (["--no-such-gate", "1"], "no such option"),
])
def test_usage_errors_exit_2(tmp_path, capsys, args, needle):
    r = write(tmp_path, "r.json", convert_report())
    rc, _, err = run_cli(capsys, str(r), *args)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle.lower() in lines[0].lower(), err


def test_no_report_is_usage_error(capsys):
    rc, _, err = run_cli(capsys, "--min-macs-reduction", "1")
    assert rc == 2 and len(err.strip().splitlines()) == 1


def test_directory_and_zip_without_recipe(tmp_path, capsys):
    import zipfile

    rc, _, err = run_cli(capsys, str(tmp_path), "--min-macs-reduction", "1")
    assert rc == 2 and "directory" in err
    z = tmp_path / "x.ghost"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("a.txt", "x")
    rc, _, err = run_cli(capsys, str(z), "--min-macs-reduction", "1")
    assert rc == 2 and "recipe.json" in err


def test_library_raises_only_ghostify_error(tmp_path):
    with pytest.raises(GhostifyError):
        run_gates([write(tmp_path, "r.json", {"totals": {"macs_before": 1, "macs_after": math.pi}})],
                  {"macs_reduction": None})


def test_model_tensor_file_is_not_a_report(tmp_path, capsys):
    path = tmp_path / "model.pt"
    torch.save(nn.Linear(2, 2).state_dict(), path)
    rc, _, err = run_cli(capsys, str(path), "--min-macs-reduction", "1")
    assert rc == 2 and len(err.strip().splitlines()) == 1


def test_real_bench_json_gates_on_its_latency_ratio(tmp_path, capsys):
    # helper B's bench writes latency_ratio = median of t_B / t_A at the top level
    latency = pytest.importorskip("ghostify.runtime.latency")
    from ghostify.export import export_onnx

    big = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1)).eval()
    small = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1)).eval()
    export_onnx(big, tmp_path / "a.onnx", (3, 16, 16), deploy=False, check=False, exporter="torchscript")
    export_onnx(small, tmp_path / "b.onnx", (3, 16, 16), deploy=False, check=False, exporter="torchscript")
    result = latency.bench_onnx(tmp_path / "a.onnx", tmp_path / "b.onnx", runs=5, warmup=1)
    path = write(tmp_path, "bench.json", result)
    ratio = read_figures(path)["latency_ratio"]
    assert ratio == pytest.approx(result["latency_ratio"])
    rc, _, err = run_cli(capsys, str(path), "--max-latency-ratio", f"{ratio * 1.01:.6g}")
    assert rc == 0, err
    rc, _, err = run_cli(capsys, str(path), "--max-latency-ratio", f"{ratio * 0.99:.6g}")
    assert rc == 1 and "latency ratio" in err
