"""The .ghost archive round trip and the convert/analyze commands."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torchvision

import ghostify
from ghostify.cli import main
from ghostify.utils import atomic_write


def test_archive_round_trip_from_a_spec(tmp_path):
    loaded = ghostify.load_model("torchvision:resnet18", input_size="3,32,32")
    ghost = ghostify.convert(loaded.model, s=2, d=3)
    path = ghostify.save(ghost, tmp_path / "r18.ghost", "torchvision:resnet18", loaded.input_size)
    back = ghostify.load(path)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(back(x), ghost.eval()(x))
    assert [layer.name for layer in ghostify.get_plan(back).converted] == \
        [layer.name for layer in ghostify.get_plan(ghost).converted]
    with pytest.raises(ghostify.GhostifyError, match="already exists"):
        ghostify.save(ghost, path, "torchvision:resnet18", loaded.input_size)


def test_archive_from_a_file_source_keeps_only_a_skeleton(tmp_path):
    model = torchvision.models.resnet18(num_classes=7).eval()
    src = tmp_path / "mine.pt"
    torch.save(model, src)
    loaded = ghostify.load_model(str(src), input_size="3,32,32")
    ghost = ghostify.convert(loaded.model, s=3, d=1)
    out = ghostify.save(ghost, tmp_path / "mine.ghost", loaded.model, loaded.input_size)
    assert out.stat().st_size < os.path.getsize(src)  # weights once, not twice
    back = ghostify.load(out)
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(back(x), ghost.eval()(x))
    assert back(x).shape == (1, 7)


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "x.json"
    with pytest.raises(TypeError):
        atomic_write(target, 123)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []
    atomic_write(target, "ok")
    assert target.read_text() == "ok"


def test_cli_convert_writes_archive_and_json(tmp_path, capsys):
    out, report = tmp_path / "m.ghost", tmp_path / "r.json"
    code = main(["convert", "torchvision:resnet18", "--s", "2", "--d", "3", "--input-size", "3,32,32",
                 "--out", str(out), "--json", str(report), "--no-layers"])
    assert code == 0, capsys.readouterr().err
    data = json.loads(report.read_text())
    assert data["totals"]["layers_converted"] == 19 and data["model"] == "torchvision:resnet18"
    assert ghostify.load(out)(torch.randn(1, 3, 32, 32)).shape == (1, 1000)
    # existing output: refused without --force, one line, exit 2
    code = main(["convert", "torchvision:resnet18", "--input-size", "3,32,32", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "already exists" in err and len(err.strip().splitlines()) == 1


def test_cli_analyze_sweep(tmp_path, capsys):
    path = tmp_path / "sweep.json"
    code = main(["analyze", "torchvision:resnet18", "--input-size", "3,32,32", "--sweep-s", "2,4",
                 "--sweep-d", "1", "--json", str(path)])
    assert code == 0, capsys.readouterr().err
    rows = json.loads(path.read_text())["rows"]
    assert [(r["s"], r["d"]) for r in rows] == [(2, 3), (4, 3), (2, 1)]
    assert rows[0]["macs_after"] > rows[1]["macs_after"]  # larger s, fewer MACs (Table 4)
    assert rows[2]["macs_after"] < rows[0]["macs_after"]  # smaller d, fewer MACs (Table 3)


@pytest.mark.parametrize("args,needle", [
    (["convert", "torchvision:resnet5"], "did you mean"),
    (["convert", "torchvision:resnet18", "--s", "0"], "ratio s"),
    (["convert", "torchvision:resnet18", "--d", "4"], "odd"),
    (["convert", "torchvision:resnet18", "--s", "x"], "--s"),
    (["convert", "nothing-here.pt"], "no such file"),
    (["analyze", "torchvision:resnet18", "--sweep-s", "2,a"], "comma-separated"),
])
def test_cli_bad_input_is_one_line_exit_2(args, needle, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_state_dict_with_arch_and_torch_export_archives(tmp_path, capsys):
    model = torchvision.models.resnet18(num_classes=4).eval()
    torch.save(model.state_dict(), tmp_path / "sd.pth")
    code = main(["convert", str(tmp_path / "sd.pth"), "--input-size", "3,32,32", "--no-layers"])
    assert code == 2 and "--arch" in capsys.readouterr().err
    code = main(["convert", str(tmp_path / "sd.pth"), "--arch", "torchvision:resnet18", "--input-size", "3,32,32",
                 "--no-layers"])
    assert code == 2 and "does not fit the architecture" in capsys.readouterr().err  # 4 classes vs 1000
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "sd1000.pth")
    assert main(["convert", str(tmp_path / "sd1000.pth"), "--arch", "torchvision:resnet18",
                 "--input-size", "3,32,32", "--init", "random", "--no-layers"]) == 0
    assert (tmp_path / "sd1000.ghost-s2d3.ghost").exists()  # saved next to the input by default

    x = torch.randn(1, 3, 32, 32)
    torch.export.save(torch.export.export(model, (x,)), tmp_path / "m.pt2")
    out = tmp_path / "m.ghost"
    assert main(["convert", str(tmp_path / "m.pt2"), "--input-size", "3,32,32", "--init", "random", "--out", str(out),
                 "--json", str(tmp_path / "m.json"), "--no-layers"]) == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "m.json").read_text())
    assert report["totals"]["layers_converted"] == 19
    assert report["totals"]["theoretical_speedup"] == pytest.approx(report["totals"]["measured_speedup"], rel=0.01)
    assert ghostify.load(out)(x).shape == (1, 4)
