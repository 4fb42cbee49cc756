"""``ghostify bench`` and ``ghostify check`` on a deployment board: onnxruntime, numpy, typer, rich and no torch.

Each test runs ``python -m ghostify`` in a subprocess whose ``sitecustomize`` makes every import of
torch, torchvision, timm, fvcore, onnx, onnxscript and safetensors fail, as on a machine where
they are not installed, and logs each attempt. The models are built with onnx's helper API here,
in the test process, so the child never needs the exporter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parents[1]
BLOCKED = ("torch", "torchvision", "timm", "fvcore", "onnx", "onnxscript", "safetensors")

SITECUSTOMIZE = textwrap.dedent(f"""
    import atexit, importlib.abc, os, sys

    BLOCKED = {BLOCKED!r}
    LOG = os.environ["GHOSTIFY_TEST_IMPORT_LOG"]

    def _log(line):
        with open(LOG, "a") as f:
            f.write(line + "\\n")

    class _NotInstalled(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                _log("attempt " + name)
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
            return None

    sys.meta_path.insert(0, _NotInstalled())
    # whatever got in anyway (it cannot: the finder comes first), and that the child got this far
    atexit.register(lambda: _log("loaded " + " ".join(sorted(m for m in sys.modules
                                                              if m.split(".")[0] in BLOCKED))))
""")


def _conv_model(path: Path, channels: int) -> Path:
    """A one-convolution ONNX model, input (1, 3, 16, 16), built without torch."""
    rng = np.random.default_rng(channels)
    w = numpy_helper.from_array(rng.standard_normal((channels, 3, 3, 3)).astype(np.float32), "w")
    node = helper.make_node("Conv", ["input", "w"], ["output"], pads=[1, 1, 1, 1])
    graph = helper.make_graph([node], "conv", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                             [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, channels, 16, 16])],
                              [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # readable by every onnxruntime ghostify supports
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with the import blocker (``site/``) and two ONNX models."""
    d = tmp_path_factory.mktemp("board")
    (d / "site").mkdir()
    (d / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    _conv_model(d / "a.onnx", 8)
    _conv_model(d / "b.onnx", 4)
    return d


def ghostify_without_torch(board: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """``python -m ghostify ARGS`` with the blocker first on the path; its result and the import log."""
    log = board / "imports.log"
    log.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(board / "site"), str(REPO)]),
           "GHOSTIFY_TEST_IMPORT_LOG": str(log), "COLUMNS": "200"}
    env.pop("PYTHONSTARTUP", None)
    proc = subprocess.run([sys.executable, "-m", "ghostify", *args], cwd=board, env=env, capture_output=True,
                          text=True, timeout=120)
    lines = log.read_text().splitlines() if log.exists() else []
    return proc, lines


def test_blocker_blocks(board: Path) -> None:
    """The environment is what it claims: ``import torch`` fails there and is logged."""
    log = board / "imports.log"
    env = {**os.environ, "PYTHONPATH": str(board / "site"), "GHOSTIFY_TEST_IMPORT_LOG": str(log)}
    log.unlink(missing_ok=True)
    proc = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1 and "No module named 'torch'" in proc.stderr
    assert "attempt torch" in log.read_text().splitlines()


def test_bench_and_check_import_no_torch(board: Path) -> None:
    proc, log = ghostify_without_torch(board, "bench", "a.onnx", "b.onnx", "--runs", "3", "--warmup", "1",
                                       "--json", "out.json")
    assert proc.returncode == 0, proc.stderr
    assert log == ["loaded "], log  # not even an attempt at torch & co, and the child ran to its end
    data = json.loads((board / "out.json").read_text())
    assert data["a"]["name"] == "a.onnx" and data["b"]["name"] == "b.onnx"
    assert data["latency_ratio"] > 0 and data["cpu"]["arch"]
    assert "speed-up of B over A" in proc.stdout

    proc, log = ghostify_without_torch(board, "check", "out.json", "--max-latency-ratio", "10")
    assert proc.returncode == 0, proc.stderr
    assert log == ["loaded "], log
    assert "latency ratio" in proc.stdout

    proc, _ = ghostify_without_torch(board, "check", "out.json", "--max-latency-ratio", "1e-9")
    assert proc.returncode == 1 and "gate failed" in proc.stderr  # the gate is live there too


@pytest.mark.parametrize("args", [
    ("convert", "resnet18"),
    ("analyze", "resnet18"),
    ("export", "resnet18", "--onnx", "r.onnx"),
    ("finetune", "r.ghost", "--teacher", "resnet18", "--data", "fake"),
    ("paper", "--no-write"),
    ("bench", "a.onnx", "--torch", "resnet18"),
])
def test_other_commands_need_torch_in_one_line(board: Path, args: tuple[str, ...]) -> None:
    proc, log = ghostify_without_torch(board, *args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "needs PyTorch" in lines[0] and "ghostify bench" in lines[0] and "Traceback" not in proc.stderr
    assert "attempt torch" in log


def test_help_works_without_torch(board: Path) -> None:
    for command in ("convert", "analyze", "export", "bench", "check", "finetune", "paper"):
        proc, log = ghostify_without_torch(board, command, "--help")
        assert proc.returncode == 0 and "Usage" in proc.stdout, (command, proc.stderr)
        assert log == ["loaded "], (command, log)
