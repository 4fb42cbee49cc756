"""``ghostify export`` and ``ghostify bench`` from the command line; cpu_info; the bench JSON gate."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import importable_module

from ghostify.cli import main
from ghostify.runtime import bench_onnx, compare, cpu_info, percentiles, profile_onnx, time_onnx

MODELS_SRC = textwrap.dedent("""
    from torch import nn

    def small():
        return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                             nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                             nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))

    def smaller():
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
""")


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    yield from importable_module(tmp_path_factory, "bench_cli_models", MODELS_SRC)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def onnx_pair(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """The original and its converted form, both exported by the CLI (same path)."""
    d = tmp_path_factory.mktemp("onnx")
    ghost = d / "small.ghost"
    assert main(["convert", "bench_cli_models:small", "--input-size", "3,16,16", "-o", str(ghost), "--no-layers"]) == 0
    a, b = d / "a.onnx", d / "b.onnx"
    assert main(["export", "bench_cli_models:small", "--input-size", "3,16,16", "--onnx", str(a),
                 "--exporter", "torchscript"]) == 0
    # the .ghost archive remembers its input size; its source is a factory spec, so rebuilding it runs
    # that code: it takes --trust
    assert main(["export", str(ghost), "--onnx", str(b), "--json", str(d / "export.json")]) == 2
    assert main(["export", str(ghost), "--onnx", str(b), "--json", str(d / "export.json"), "--trust"]) == 0
    return a, b, d


def test_export_writes_and_reports(onnx_pair: tuple[Path, Path, Path]) -> None:
    a, b, d = onnx_pair
    assert a.is_file() and b.is_file()
    data = json.loads((d / "export.json").read_text())
    assert data["kind"] == "export" and data["passed"] is True and data["deployed"] is True
    assert data["max_rel_error"] <= 1e-4 and data["input_size"] == [3, 16, 16]
    assert data["command"].startswith("ghostify export")


def test_export_refuses_existing_and_bad_input(capsys, onnx_pair, models_dir) -> None:
    a, _, d = onnx_pair
    rc, _, err = run(capsys, "export", "bench_cli_models:small", "--input-size", "3,16,16", "--onnx", str(a))
    assert rc == 2 and "--force" in err and len(err.strip().splitlines()) == 1
    rc, _, err = run(capsys, "export", "bench_cli_models:small", "--input-size", "3,16", "--onnx", str(d / "x.onnx"))
    assert rc == 2 and "input-size" in err
    rc, _, err = run(capsys, "export", "bench_cli_models:small", "--onnx", str(d / "x.txt"))
    assert rc == 2 and ".onnx" in err
    rc, _, err = run(capsys, "export", "bench_cli_models:nope", "--onnx", str(d / "x.onnx"))
    assert rc == 2
    assert not (d / "x.onnx").exists()


def test_export_parity_failure_exit_1(capsys, models_dir, tmp_path) -> None:
    out = tmp_path / "m.onnx"
    rc, _, err = run(capsys, "export", "bench_cli_models:small", "--input-size", "3,16,16", "--onnx", str(out),
                     "--rtol", "1e-12", "--exporter", "torchscript")
    assert rc == 1
    line = err.strip().splitlines()[-1]
    assert "parity check failed" in line and "max rel error" in line and "not written" in line
    assert not out.exists()


def test_bench_two_models_json(capsys, onnx_pair) -> None:
    a, b, d = onnx_pair
    out = d / "bench.json"
    rc, stdout, _ = run(capsys, "bench", str(a), str(b), "--runs", "6", "--warmup", "1", "--json", str(out))
    assert rc == 0, stdout
    data = json.loads(out.read_text())
    assert data["kind"] == "bench" and data["interleaved"] is True
    assert data["a"]["runs"] == 6 and data["b"]["runs"] == 6
    assert data["latency_ratio"] > 0 and data["speedup"] > 0
    assert data["speedup_p10"] <= data["speedup"] <= data["speedup_p90"]
    assert data["a"]["p10_ms"] <= data["a"]["p50_ms"] <= data["a"]["p90_ms"]
    assert data["cpu"]["model"] and data["threads"] == 1
    assert data["graph_optimization"] == "ORT_ENABLE_ALL"
    assert "speed-up of B over A" in stdout
    # the bench JSON is what `ghostify check --max-latency-ratio` gates on
    assert main(["check", str(out), "--max-latency-ratio", "1000", "-q"]) == 0
    assert main(["check", str(out), "--max-latency-ratio", "1e-9", "-q"]) == 1


def test_bench_single_and_torch(capsys, onnx_pair, models_dir) -> None:
    a, _, d = onnx_pair
    out = d / "single.json"
    rc, _, err = run(capsys, "bench", str(a), "--runs", "3", "--warmup", "0", "--json", str(out),
                     "--torch", "bench_cli_models:small", "--torch", "bench_cli_models:smaller", "--input-size",
                     "3,16,16")
    assert rc == 0, err
    data = json.loads(out.read_text())
    assert "b" not in data and "latency_ratio" not in data
    assert data["torch"]["engine"] == "torch-eager" and data["torch"]["speedup"] > 0


def test_bench_bad_input(capsys, onnx_pair, tmp_path) -> None:
    a, _, _ = onnx_pair
    for args, needle in [((str(tmp_path / "missing.onnx"),), "no such"),
                         ((str(a), "--threads", "0"), "--threads"),
                         ((str(a), "--batch", "2"), "dynamic-batch"),
                         ((str(a), "--runs", "0"), "--runs"),
                         ((str(a), "--device", "tpu"), "--device")]:
        rc, _, err = run(capsys, "bench", *args)
        assert rc == 2, (args, err)
        assert needle in err and len(err.strip().splitlines()) == 1, err
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    rc, _, err = run(capsys, "bench", str(junk))
    assert rc == 2 and "onnxruntime cannot load" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message when there is no GPU")
def test_bench_cuda_without_gpu(capsys, onnx_pair) -> None:
    a, _, _ = onnx_pair
    rc, _, err = run(capsys, "bench", str(a), "--runs", "1", "--torch", "bench_cli_models:small", "--device", "cuda",
                     "--input-size", "3,16,16")
    assert rc == 2 and "CUDA" in err


def test_torch_only_options_without_torch_are_refused(capsys, onnx_pair) -> None:
    a, _, _ = onnx_pair  # --device cuda used to time onnxruntime on the CPU and add a GPU note
    for extra in (["--device", "cuda"], ["--input-size", "abc"]):
        rc, _, err = run(capsys, "bench", str(a), "--runs", "1", *extra)
        assert rc == 2 and "apply to the --torch models" in err


def test_library_bench_and_profile(onnx_pair) -> None:
    a, b, _ = onnx_pair
    calls: list[tuple[int, int]] = []
    r = bench_onnx(a, b, runs=4, warmup=1, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (8, 8)  # interleaved: 2 models x 4 runs
    assert len({r["a"]["name"], r["b"]["name"]}) == 2
    prof = profile_onnx(b, runs=3, warmup=1)
    ops = {o["op"] for o in prof["ops"]}
    assert any("Conv" in o for o in ops)
    assert abs(sum(o["share"] for o in prof["ops"]) - 1.0) < 0.01


def test_time_onnx_three_models_interleaved(onnx_pair) -> None:
    a, b, _ = onnx_pair
    order: list[int] = []
    timed = time_onnx([a, b, a], runs=3, warmup=0, progress=lambda done, total: order.append(done))
    assert [len(t.times_ms) for t in timed] == [3, 3, 3] and order == list(range(1, 10))
    c = compare([timed[0], timed[2]])  # the same model twice: ratios near 1, p10 <= p50 <= p90
    assert c["speedup_p10"] <= c["speedup"] <= c["speedup_p90"]
    with pytest.raises(Exception, match="no such ONNX file"):
        time_onnx([a, a.parent / "missing.onnx"], runs=1)


def test_percentiles() -> None:
    p = percentiles([1.0, 2.0, 3.0, 4.0, 5.0])
    assert p["p50"] == 3.0 and p["p10"] == pytest.approx(1.4) and p["p90"] == pytest.approx(4.6) and p["n"] == 5


def test_cpu_info_x86_and_arm(tmp_path) -> None:
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
                   "flags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512bw avx512_vnni amx_tile amx_bf16\n\n"
                   "processor\t: 1\nmodel name\t: other\n")
    info = cpu_info(x86)
    assert info["model"] == "Intel(R) Xeon(R) Platinum 8480+"
    assert {"avx2", "avx512f", "avx512_vnni", "amx_tile"} <= set(info["isa"])
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nBogoMIPS\t: 243.75\nFeatures\t: fp asimd evtstrm aes asimddp sve sve2 i8mm bf16\n"
                   "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd4f\n")
    info = cpu_info(arm)
    assert info["model"] == "ARM Neoverse-V2"
    assert {"asimd", "sve", "sve2", "i8mm"} <= set(info["isa"])
    assert cpu_info(tmp_path / "missing")["model"]  # falls back to platform
