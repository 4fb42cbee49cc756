"""The per-layer report at any terminal width: every figure whole, never cut by rich.

At 80 columns rich used to shrink the table by cutting cells (``256→1024`` printed as
``256→10``, ``14×14`` as ``14×1``) and dropped the s,d and reason columns.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torchvision
from rich.console import Console

import ghostify
from ghostify.cli import main
from ghostify.report.render import PIPE_WIDTH, _short, render_report, report_console
from ghostify.report.report import Report


@pytest.fixture(scope="module")
def r50_report() -> Report:
    model = torchvision.models.resnet50().eval()
    # 112 px keeps the test quick; the widths of the figures, not their values, are under test
    return ghostify.build_report(model, ghostify.convert(model), (3, 112, 112), "torchvision:resnet50")


def _render(report: Report, width: int) -> str:
    buf = io.StringIO()
    render_report(report, Console(file=buf, width=width, force_terminal=False))
    return buf.getvalue()


def _figures(row) -> list[str]:
    figures = [f"{row.c}→{row.n}", "×".join(map(str, row.out_hw))]
    return figures + ([f"{row.s},{row.d}"] if row.converted else [])


def assert_every_figure_whole(report: Report, text: str, width: int) -> None:
    lines = text.splitlines()
    assert all(len(line.rstrip()) <= width for line in lines), max(lines, key=len)
    flat = " ".join(text.split())  # a wrapped reason reads whole once the line breaks are spaces
    for row in report.layers:
        at = next(i for i, line in enumerate(lines) if line.split() and line.split()[0] == row.name)
        shape = lines[at] + " " + lines[at + 1]  # a long name stands alone; its figures follow
        for figure in _figures(row):
            assert f" {figure}" in shape, (row.name, figure, shape)
        if not row.converted:
            assert f"kept: {' '.join(row.reason.split())}" in flat, row.reason


@pytest.mark.parametrize("width", [80, 100, 120])
def test_narrow_terminals_get_every_figure(r50_report, width):
    text = _render(r50_report, width)
    assert_every_figure_whole(r50_report, text, width)
    assert " 256→1024 " in text + " " and " 56×56" in text and "kept: stem reading the input image" in " ".join(
        text.split())


def test_wide_consoles_get_one_line_per_layer(r50_report):
    text = _render(r50_report, PIPE_WIDTH)
    assert_every_figure_whole(r50_report, text, PIPE_WIDTH)
    line = next(li for li in text.splitlines() if li.startswith("layer3.0.conv3"))
    row = next(r for r in r50_report.layers if r.name == "layer3.0.conv3")
    macs = f"{_short(row.macs_before)}→{_short(row.macs_after)}"
    for figure in ("256→1024", "1×1/1", "7×7", "2,3", "1.93", macs, "264.2K→137.7K", "paper"):
        assert f" {figure}" in line, (figure, line)


def test_a_pipe_gets_160_columns_and_width_wins(monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    assert report_console().width == PIPE_WIDTH  # pytest's stdout is not a terminal
    assert report_console(90).width == 90
    monkeypatch.setenv("COLUMNS", "80")
    assert report_console().width == 80  # the user's COLUMNS is theirs to set


def test_cli_width_flag(capsys, tmp_path):
    rc = main(["analyze", "torchvision:resnet18", "--input-size", "3,32,32", "--width", "72"])
    out = capsys.readouterr().out
    assert rc == 0 and all(len(line.rstrip()) <= 72 for line in out.splitlines())
    assert "layer4.0.downsample.0" in out and "256→512" in out
    rc = main(["analyze", "torchvision:resnet18", "--width", "10"])
    assert rc == 2 and "--width" in capsys.readouterr().err


def test_subprocess_at_columns_80_without_a_tty(tmp_path):
    env = {**os.environ, "COLUMNS": "80",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "ghostify", "analyze", "torchvision:resnet18", "--input-size",
                           "3,64,64", "--json", str(tmp_path / "r.json")], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report_json = (tmp_path / "r.json").read_text()
    import json

    rows = json.loads(report_json)["layers"]
    lines = proc.stdout.splitlines()
    assert all(len(line.rstrip()) <= 80 for line in lines)
    for row in rows:
        at = next(i for i, line in enumerate(lines) if line.split() and line.split()[0] == row["name"])
        shape = lines[at] + " " + lines[at + 1]
        assert f"{row['c']}→{row['n']}" in shape and "×".join(map(str, row["out_hw"])) in shape
        if row["converted"]:
            assert f"{row['s']},{row['d']}" in shape
        else:
            assert f"kept: {row['reason']}" in " ".join(proc.stdout.split())
