"""Every bad input to the CLI: exit code 2, exactly one line on stderr, no traceback (issue 6).

Most tests call ``ghostify.cli.main([...])`` in-process (fast); two run the installed console
script in a subprocess, the faithful check of "one line on stderr".
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import importable_module
from torch import nn

from ghostify.cli import main

MODELS_SRC = textwrap.dedent("""
    import torch
    from torch import nn

    def small():  # stem conv + one convertible conv
        return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                             nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))

    def fixed_size():  # a flatten -> linear head: only 3x8x8 inputs fit
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                             nn.Flatten(), nn.Linear(8 * 8 * 8, 10))

    def stem_only():  # the only convolution is the stem: the default policy converts nothing
        return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))

    def no_conv():
        return nn.Sequential(nn.Flatten(), nn.Linear(12, 2))

    def not_a_module():
        return 42

    def broken():
        raise ValueError("boom")
""")

REPO = Path(__file__).resolve().parents[1]
GHOSTIFY = REPO / ".venv" / "bin" / "ghostify"


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    yield from importable_module(tmp_path_factory, "cli_err_models", MODELS_SRC)


@pytest.fixture(scope="module")
def small_pt(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Path:
    import cli_err_models

    path = tmp_path_factory.mktemp("pt") / "small.pt"
    torch.save(cli_err_models.small(), path)
    return path


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc: int, err: str, *needles: str) -> None:
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("ghostify: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle.lower() in lines[0].lower(), (needle, lines[0])


def files_in(d: Path) -> set[str]:
    return {p.name for p in d.iterdir()}


# -- files ---------------------------------------------------------------------------------------
def test_missing_file(capsys, tmp_path):
    rc, _, err = run_cli(capsys, "convert", str(tmp_path / "nothere.pt"))
    assert_one_line_error(rc, err, "no such file")


def test_directory_instead_of_file(capsys, tmp_path):
    d = tmp_path / "adir.pt"
    d.mkdir()
    rc, _, err = run_cli(capsys, "convert", str(d))
    assert_one_line_error(rc, err, "directory")


def test_unreadable_file(capsys, tmp_path, monkeypatch, small_pt):
    # root reads anything, so simulate EACCES where the file is read
    path = tmp_path / "locked.pt"
    path.write_bytes(small_pt.read_bytes())
    real = Path.read_bytes

    def deny(self: Path) -> bytes:
        if self.name == "locked.pt":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", deny)
    rc, _, err = run_cli(capsys, "convert", str(path))
    assert_one_line_error(rc, err, "permission denied")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read a chmod 000 file")
def test_unreadable_file_chmod(capsys, tmp_path, small_pt):
    path = tmp_path / "locked.pt"
    path.write_bytes(small_pt.read_bytes())
    path.chmod(0)
    rc, _, err = run_cli(capsys, "convert", str(path))
    assert_one_line_error(rc, err, "permission denied")


def test_empty_file(capsys, tmp_path):
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    rc, _, err = run_cli(capsys, "convert", str(path))
    assert_one_line_error(rc, err, "empty")


@pytest.mark.parametrize("fraction", [0.01, 0.5, 0.99])
def test_truncated_file(capsys, tmp_path, small_pt, fraction):
    data = small_pt.read_bytes()
    path = tmp_path / "cut.pt"
    path.write_bytes(data[: max(1, int(len(data) * fraction))])
    rc, _, err = run_cli(capsys, "convert", str(path))
    assert_one_line_error(rc, err, "not a")


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".pt2", ".ghost", ".bin"])
def test_garbage_file(capsys, tmp_path, suffix):
    path = tmp_path / f"garbage{suffix}"
    path.write_bytes(os.urandom(4096))
    rc, _, err = run_cli(capsys, "convert", str(path))
    assert_one_line_error(rc, err, "not a")


def test_garbage_zip_named_ghost(capsys, tmp_path):
    path = tmp_path / "fake.ghost"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("hello.txt", "not an archive")
    rc, _, err = run_cli(capsys, "convert", str(path))
    assert_one_line_error(rc, err, "not a ghostify archive")


def test_truncated_ghost_archive(capsys, tmp_path, models_dir):
    out = tmp_path / "m.ghost"
    rc, _, _ = run_cli(capsys, "convert", "cli_err_models:small", "--input-size", "3,16,16", "--out", str(out),
                       "--no-layers")
    assert rc == 0
    cut = tmp_path / "cut.ghost"
    cut.write_bytes(out.read_bytes()[:-200])
    rc, _, err = run_cli(capsys, "convert", str(cut))
    assert_one_line_error(rc, err)


def test_torchscript_file_is_explained(capsys, tmp_path, models_dir):
    import cli_err_models

    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(cli_err_models.small()), str(path))
    rc, _, err = run_cli(capsys, "convert", str(path))
    assert_one_line_error(rc, err, "TorchScript", "torch.fx cannot trace")


def test_state_dict_without_arch(capsys, tmp_path, models_dir):
    import cli_err_models

    path = tmp_path / "weights.pth"
    torch.save(cli_err_models.small().state_dict(), path)
    rc, _, err = run_cli(capsys, "convert", str(path))
    assert_one_line_error(rc, err, "--arch")


def test_state_dict_wrong_arch(capsys, tmp_path, models_dir):
    import cli_err_models

    path = tmp_path / "weights.pth"
    torch.save(cli_err_models.small().state_dict(), path)
    rc, _, err = run_cli(capsys, "convert", str(path), "--arch", "cli_err_models:fixed_size")
    assert_one_line_error(rc, err, "does not fit")


# -- model names -----------------------------------------------------------------------------------
@pytest.mark.parametrize("spec, needles", [
    ("torchvision:resnet19", ["unknown torchvision model", "did you mean", "resnet18"]),
    ("timm:resnet5O", ["unknown timm model", "did you mean", "resnet50"]),
    ("ghostify:nosuchmodel", ["unknown ghostify model"]),
    ("no_such_package_xyz:factory", ["cannot import"]),
    ("cli_err_models:nope", ["no attribute"]),
    ("cli_err_models:not_a_module", ["did not give a torch.nn.Module"]),
    ("justaword", ["cannot read model spec"]),
    ("   ", ["empty model spec"]),
])
def test_unknown_model_names(capsys, models_dir, spec, needles):
    rc, _, err = run_cli(capsys, "convert", spec)
    assert_one_line_error(rc, err, *needles)


def test_factory_raising_is_not_a_traceback(capsys, models_dir):
    rc, _, err = run_cli(capsys, "convert", "cli_err_models:broken")
    assert_one_line_error(rc, err, "ValueError: boom")  # the user's factory crashed; --debug shows where


# -- s and d -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("flags, needle", [
    (["--s", "0"], "ratio s must be an integer >= 1"),
    (["--s", "-3"], "ratio s must be an integer >= 1"),
    (["--s", "1.5"], "--s"),
    (["--s", "two"], "--s"),
    (["--d", "0"], "cheap kernel d must be an integer >= 1"),
    (["--d", "-1"], "cheap kernel d must be an integer >= 1"),
    (["--d", "2"], "must be odd"),
    (["--d", "4"], "must be odd"),
    (["--d", "2.5"], "--d"),
])
@pytest.mark.parametrize("command", ["convert", "analyze"])
def test_bad_s_and_d(capsys, models_dir, command, flags, needle):
    rc, _, err = run_cli(capsys, command, "cli_err_models:small", "--input-size", "3,16,16", *flags)
    assert_one_line_error(rc, err, needle)


@pytest.mark.parametrize("n", ["0", "-3"])
def test_bad_calib_samples(capsys, models_dir, tmp_path, n):
    rc, _, err = run_cli(capsys, "convert", "cli_err_models:small", "--input-size", "3,16,16", "--init", "transfer",
                         "--calib", "synthetic", "--calib-samples", n, "--out", str(tmp_path / "x.ghost"))
    assert_one_line_error(rc, err, "--calib-samples must be >= 1")
    assert not (tmp_path / "x.ghost").exists()


# -- input size ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", ["3,abc,8", "3,8", "0,8,8", "3,8,8,8", "-1,8,8", ""])
def test_malformed_input_size(capsys, models_dir, size):
    rc, _, err = run_cli(capsys, "convert", "cli_err_models:small", "--input-size", size)
    assert_one_line_error(rc, err, "--input-size")


def test_input_size_the_model_rejects(capsys, models_dir, tmp_path):
    rc, _, err = run_cli(capsys, "convert", "cli_err_models:fixed_size", "--input-size", "3,16,16",
                         "--out", str(tmp_path / "x.ghost"))
    assert_one_line_error(rc, err, "rejected an input of size (3, 16, 16)", "--input-size")
    assert not (tmp_path / "x.ghost").exists()


def test_input_channels_the_model_rejects_says_what_it_expects(capsys, models_dir, tmp_path):
    rc, _, err = run_cli(capsys, "convert", "cli_err_models:small", "--input-size", "1,16,16",
                         "--out", str(tmp_path / "x.ghost"))
    assert_one_line_error(rc, err, "rejected", "expects C=3")


# -- nothing to convert --------------------------------------------------------------------------------
def test_nothing_to_convert_warns_and_exits_0(capsys, models_dir, tmp_path):
    out = tmp_path / "x.ghost"
    rc, _, err = run_cli(capsys, "convert", "cli_err_models:stem_only", "--input-size", "3,8,8", "--out", str(out))
    assert rc == 0
    assert "warning" in err and "no convolution was converted" in err
    assert not out.exists()


def test_nothing_to_convert_strict_exits_2(capsys, models_dir, tmp_path):
    out = tmp_path / "x.ghost"
    rc, _, err = run_cli(capsys, "convert", "cli_err_models:stem_only", "--input-size", "3,8,8", "--out", str(out),
                         "--strict")
    assert_one_line_error(rc, err, "no convolution was converted")
    assert not out.exists()


def test_model_without_any_convolution(capsys, models_dir):
    rc, _, err = run_cli(capsys, "convert", "cli_err_models:no_conv", "--input-size", "3,2,2")
    assert_one_line_error(rc, err, "no convolution")


# -- outputs --------------------------------------------------------------------------------------
@pytest.mark.parametrize("force", [False, True])
def test_output_equal_to_input_never_overwrites(capsys, small_pt, force):
    before = small_pt.read_bytes()
    args = ["convert", str(small_pt), "--input-size", "3,16,16", "--out", str(small_pt)]
    rc, _, err = run_cli(capsys, *args, *(["--force"] if force else []))
    assert_one_line_error(rc, err, "is also an input")
    assert small_pt.read_bytes() == before


def test_json_equal_to_input_never_overwrites(capsys, small_pt, tmp_path):
    before = small_pt.read_bytes()
    rc, _, err = run_cli(capsys, "convert", str(small_pt), "--input-size", "3,16,16", "--out",
                         str(tmp_path / "o.ghost"), "--json", str(small_pt), "--force")
    assert_one_line_error(rc, err, "is also an input")
    assert small_pt.read_bytes() == before
    assert not (tmp_path / "o.ghost").exists()


def test_existing_output_needs_force(capsys, models_dir, tmp_path):
    out = tmp_path / "o.ghost"
    out.write_bytes(b"precious")
    args = ["convert", "cli_err_models:small", "--input-size", "3,16,16", "--out", str(out), "--no-layers"]
    rc, _, err = run_cli(capsys, *args)
    assert_one_line_error(rc, err, "already exists", "--force")
    assert out.read_bytes() == b"precious"
    rc, _, err = run_cli(capsys, *args, "--force")
    assert rc == 0, err
    assert zipfile.is_zipfile(out)


def test_input_file_is_never_modified(capsys, small_pt, tmp_path):
    before, mtime = small_pt.read_bytes(), small_pt.stat().st_mtime_ns
    rc, _, err = run_cli(capsys, "convert", str(small_pt), "--input-size", "3,16,16", "--out",
                         str(tmp_path / "o.ghost"), "--json", str(tmp_path / "r.json"), "--no-layers")
    assert rc == 0, err
    assert small_pt.read_bytes() == before and small_pt.stat().st_mtime_ns == mtime


def test_output_directory_missing(capsys, models_dir, tmp_path):
    rc, _, err = run_cli(capsys, "convert", "cli_err_models:small", "--input-size", "3,16,16", "--out",
                         str(tmp_path / "no" / "such" / "o.ghost"))
    assert_one_line_error(rc, err, "does not exist")


def test_output_directory_is_a_file(capsys, models_dir, tmp_path):
    (tmp_path / "afile").write_text("x")
    rc, _, err = run_cli(capsys, "convert", "cli_err_models:small", "--input-size", "3,16,16", "--out",
                         str(tmp_path / "afile" / "o.ghost"))
    assert_one_line_error(rc, err, "not a directory")


def test_output_is_a_directory(capsys, models_dir, tmp_path):
    rc, _, err = run_cli(capsys, "convert", "cli_err_models:small", "--input-size", "3,16,16", "--out",
                         str(tmp_path))
    assert_one_line_error(rc, err, "is a directory")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only directory")
def test_output_directory_read_only(capsys, models_dir, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    rc, _, err = run_cli(capsys, "convert", "cli_err_models:small", "--input-size", "3,16,16", "--out",
                         str(ro / "o.ghost"))
    assert_one_line_error(rc, err, "not writable")


def test_output_directory_unwritable_at_write_time(capsys, models_dir, tmp_path, monkeypatch):
    # the directory check passes (root), then creating the temp file fails like EACCES would
    import tempfile

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    out = tmp_path / "o.ghost"
    rc, _, err = run_cli(capsys, "convert", "cli_err_models:small", "--input-size", "3,16,16", "--out", str(out),
                         "--no-layers")
    assert_one_line_error(rc, err, "cannot write", "permission denied")
    assert files_in(tmp_path) == set()


@pytest.mark.parametrize("fail_at", ["fsync", "replace"])
def test_failed_write_leaves_nothing_half_written(capsys, models_dir, tmp_path, monkeypatch, fail_at):
    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, fail_at, fail)
    out = tmp_path / "o.ghost"
    rc, _, err = run_cli(capsys, "convert", "cli_err_models:small", "--input-size", "3,16,16", "--out", str(out),
                         "--no-layers")
    assert_one_line_error(rc, err, "cannot write", "no space left")
    assert files_in(tmp_path) == set()  # neither the archive nor its temporary file


def test_interrupted_write_leaves_nothing(models_dir, tmp_path, monkeypatch):
    from ghostify.utils import atomic_write

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupt)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "o.bin", b"x" * 1000)
    assert files_in(tmp_path) == set()


def test_debug_shows_the_traceback(models_dir):
    from ghostify.errors import GhostifyError

    with pytest.raises(GhostifyError):
        main(["--debug", "convert", "torchvision:resnet19"])


# -- safe loading through the CLI ---------------------------------------------------------------------
class _Trap:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_booby_trapped_pickle_runs_nothing(capsys, tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "trap.pt"
    torch.save({"model": _Trap(str(marker))}, path)
    rc, _, err = run_cli(capsys, "convert", str(path))
    assert_one_line_error(rc, err, "posix.system", "--trust")
    assert not marker.exists()


def test_torch_saved_resnet18_converts_without_trust(capsys, tmp_path):
    import torchvision

    path = tmp_path / "resnet18.pt"
    torch.save(torchvision.models.resnet18(weights=None), path)
    before = path.read_bytes()
    out = tmp_path / "r18.ghost"
    rc, _, err = run_cli(capsys, "convert", str(path), "--input-size", "3,64,64", "--init", "random", "--out", str(out),
                         "--no-layers")
    assert rc == 0, err
    assert path.read_bytes() == before
    import ghostify

    model = ghostify.load(out)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
    assert any(isinstance(m, ghostify.GhostModule) for m in model.modules())


# -- the real console script (slow: each start imports torch) ------------------------------------------
def _script(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    exe = [str(GHOSTIFY)] if GHOSTIFY.exists() else [sys.executable, "-m", "ghostify"]
    return subprocess.run([*exe, *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_subprocess_booby_trap_exits_2_one_line(tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "trap.pt"
    torch.save(_Trap(str(marker)), path)
    before = path.read_bytes()
    proc = _script("convert", str(path), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "refused" in proc.stderr and "--trust" in proc.stderr
    assert not marker.exists()
    assert path.read_bytes() == before
    assert files_in(tmp_path) == {"trap.pt"}  # nothing written


def test_subprocess_bad_ratio_exits_2_one_line(tmp_path):
    proc = _script("convert", "torchvision:resnet18", "--s", "0", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["ghostify: error: ratio s must be an integer >= 1, got 0"]
    assert proc.stdout == ""


def test_nn_module_subclass_needs_trust(capsys, tmp_path, models_dir):
    # a class outside torch/torchvision/timm/ghostify: refused by default, loaded with --trust
    path = tmp_path / "custom.pt"
    src = tmp_path / "custom_net_mod.py"
    src.write_text("from torch import nn\nclass Net(nn.Sequential):\n    pass\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import custom_net_mod

        net = custom_net_mod.Net(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.ReLU())
        torch.save(net, path)
        rc, _, err = run_cli(capsys, "convert", str(path), "--input-size", "3,16,16", "--out",
                             str(tmp_path / "o.ghost"))
        assert_one_line_error(rc, err, "custom_net_mod.Net", "--trust")
        rc, _, err = run_cli(capsys, "convert", str(path), "--input-size", "3,16,16", "--out",
                             str(tmp_path / "o.ghost"), "--trust", "--no-layers")
        assert rc == 0, err
    finally:
        sys.path.remove(str(tmp_path))


@pytest.mark.parametrize("sweep", [[], ["--sweep-s", "2,3"]])
def test_analyze_input_size_the_model_rejects(capsys, models_dir, sweep):
    rc, _, err = run_cli(capsys, "analyze", "cli_err_models:small", "--input-size", "1,16,16", *sweep)
    assert_one_line_error(rc, err, "rejected", "expects C=3")


def test_analyze_json_never_overwrites_the_model_file(capsys, small_pt):
    before = small_pt.read_bytes()
    rc, _, err = run_cli(capsys, "analyze", str(small_pt), "--input-size", "3,16,16", "--json", str(small_pt),
                         "--force")
    assert_one_line_error(rc, err, "is also an input")
    assert small_pt.read_bytes() == before


# ---- cases from the bad-input audit: each once gave exit 1 ("unexpected ...") or touched a user's file ----

def _tamper_recipe(src: Path, dst: Path, edit) -> Path:
    """Copy the archive ``src`` to ``dst`` with its recipe.json passed through ``edit``."""
    import json

    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.namelist():
            data = zin.read(item)
            if item == "recipe.json":
                data = json.dumps(edit(json.loads(data))).encode()
            zout.writestr(item, data)
    return dst


@pytest.fixture(scope="module")
def small_ghost(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("ghost") / "small.ghost"
    assert main(["convert", "cli_err_models:small", "--input-size", "3,16,16", "--out", str(out), "--no-layers"]) == 0
    return out


def test_archive_naming_a_factory_is_not_rebuilt_without_trust(capsys, small_ghost, tmp_path):
    # the recipe's source is a factory spec: rebuilding would import and call code the archive names
    evil = _tamper_recipe(small_ghost, tmp_path / "evil.ghost", lambda r: {**r, "source": "os:getpid"})
    rc, _, err = run_cli(capsys, "analyze", str(evil))
    assert_one_line_error(rc, err, "pass --trust")
    # the archive ghostify wrote itself from a factory spec needs --trust just the same, and loads with it
    assert main(["analyze", str(small_ghost), "--no-layers", "--trust"]) == 0


@pytest.mark.parametrize("edit, needle", [
    (lambda r: [1, 2], "expected an object"),
    (lambda r: {k: v for k, v in r.items() if k != "config"}, "no 'config'"),
    (lambda r: {**r, "converted": "x"}, "'converted'"),
    (lambda r: {**r, "input_size": [3, 0, 16]}, "'input_size'"),
    (lambda r: {**r, "aliases": ["a"]}, "'aliases'"),
    (lambda r: {**r, "aliases": {"x": "missing"}}, "missing tensor"),
])
def test_hand_edited_recipe_is_a_one_line_error(capsys, small_ghost, tmp_path, edit, needle):
    bad = _tamper_recipe(small_ghost, tmp_path / "bad.ghost", edit)
    rc, _, err = run_cli(capsys, "analyze", str(bad), "--trust")
    assert_one_line_error(rc, err, needle)


def test_outputs_never_replace_an_arch_file(capsys, tmp_path, models_dir):
    import cli_err_models

    arch, weights = tmp_path / "arch.pt", tmp_path / "w.pth"
    torch.save(cli_err_models.small(), arch)
    torch.save(cli_err_models.small().state_dict(), weights)
    before = arch.read_bytes()
    for args in (["convert", str(weights), "--arch", str(arch), "--input-size", "3,16,16", "--out",
                  str(tmp_path / "arch.ghost"), "--json", str(arch), "--force"],
                 ["analyze", str(weights), "--arch", str(arch), "--input-size", "3,16,16", "--json", str(arch),
                  "--force"]):
        rc, _, err = run_cli(capsys, *args)
        assert_one_line_error(rc, err, "is also an input")
    assert arch.read_bytes() == before


def test_convert_output_needs_the_ghost_suffix(capsys, tmp_path, models_dir):
    rc, _, err = run_cli(capsys, "convert", "cli_err_models:small", "--input-size", "3,16,16", "--out",
                         str(tmp_path / "x.pt"))
    assert_one_line_error(rc, err, ".ghost suffix")
    assert not (tmp_path / "x.pt").exists()


def test_json_to_stdout_is_only_json(capsys, tmp_path, models_dir):
    import json

    rc, out, _ = run_cli(capsys, "convert", "cli_err_models:small", "--input-size", "3,16,16", "--out",
                         str(tmp_path / "s.ghost"), "--json", "-")
    assert rc == 0
    assert json.loads(out)["kind"] == "convert"  # the human table went to stderr


@pytest.mark.parametrize("payload, needle", [
    ('{"totals": {"macs_before": ' + "9" * 400 + ', "macs_after": 1, "params_before": 2, "params_after": 1}}',
     "not a finite number"),
    ('{"latency_ratio": 1}\n' + "[" * 100000 + "]" * 100000 + "\n", "not JSON"),
])
def test_check_reports_that_once_overflowed(capsys, tmp_path, payload, needle):
    report = tmp_path / "r.json"
    report.write_text(payload)
    rc, _, err = run_cli(capsys, "check", str(report), "--min-macs-reduction", "1.5")
    assert_one_line_error(rc, err, needle)


def test_corrupt_zip_member_in_check_is_one_line(capsys, tmp_path):
    bad = tmp_path / "bad.ghost"
    with zipfile.ZipFile(bad, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("recipe.json", b'{"format": 1}' * 200)
    raw = bytearray(bad.read_bytes())
    start = raw.find(b"recipe.json") + len("recipe.json")  # the deflated body right after the local header
    raw[start:start + 2] = b"\xff\xff"  # a reserved deflate block type: zlib.error, not BadZipFile
    bad.write_bytes(bytes(raw))
    rc, _, err = run_cli(capsys, "check", str(bad), "--min-macs-reduction", "1.5")
    assert_one_line_error(rc, err, "recipe.json")


def test_int_keyed_dict_of_tensors_is_not_a_state_dict(capsys, tmp_path):
    path = tmp_path / "odd.pt"
    torch.save({1: torch.zeros(2)}, path)
    rc, _, err = run_cli(capsys, "analyze", str(path), "--arch", "cli_err_models:small")
    assert_one_line_error(rc, err, "not a state_dict")


def test_absurd_ratio_is_one_line(capsys, models_dir):
    rc, _, err = run_cli(capsys, "convert", "cli_err_models:small", "--input-size", "3,16,16", "--s",
                         "99999999999999999999")
    assert_one_line_error(rc, err, "at most")


def test_bench_rejects_what_it_cannot_time(capsys, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.INT64, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.INT64, [1, 4])])
    path = tmp_path / "int.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    rc, _, err = run_cli(capsys, "bench", str(path), "--runs", "1", "--warmup", "0")
    assert_one_line_error(rc, err, "float images only")
    rc, _, err = run_cli(capsys, "bench", str(path), "--threads", "100000")
    assert_one_line_error(rc, err, "--threads must be between 1 and")
