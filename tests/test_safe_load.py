"""Safe loading: allow-listed module classes load, booby-trapped files run nothing (issue 6)."""

from __future__ import annotations

import io
import os
import pickle
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

import ghostify
from ghostify.errors import GhostifyError, UnsafeModelFileError
from ghostify.io.safe_load import _allowed, safe_export_load, safe_torch_load


class Trap:
    """Unpickling this runs a shell command (creates ``marker``)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def saved(obj, legacy: bool = False) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


def with_data_pkl(pkl: bytes) -> bytes:
    """A torch.save zip whose data.pkl is replaced by hand-written pickle bytes."""
    zin = zipfile.ZipFile(io.BytesIO(saved({"x": 1})))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            zout.writestr(item.filename, pkl if item.filename.endswith("data.pkl") else data)
    return out.getvalue()


def small_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))


# -- booby traps -------------------------------------------------------------------------------
@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("wrap", ["bare", "in_dict", "as_module_attr"])
def test_trap_runs_nothing(tmp_path, legacy, wrap):
    marker = tmp_path / "PWNED"
    trap = Trap(marker)
    obj = {"bare": trap, "in_dict": {"state_dict": {"w": torch.ones(1)}, "extra": trap}}.get(wrap)
    if obj is None:
        obj = small_net()
        obj.payload = trap  # a module carrying the trap in its __dict__
    with pytest.raises(UnsafeModelFileError) as info:
        safe_torch_load(saved(obj, legacy=legacy))
    legacy_module = legacy and wrap == "as_module_attr"  # refused earlier: the pickled module source
    assert ("legacy" if legacy_module else "system") in str(info.value) and "trust=True" in str(info.value)
    assert not marker.exists()


def test_raw_pickle_trap_runs_nothing(tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "model.pt"
    path.write_bytes(pickle.dumps(Trap(marker)))
    with pytest.raises(GhostifyError, match="not a PyTorch file"):
        safe_torch_load(path)
    assert not marker.exists()


@pytest.mark.parametrize("pkl, name", [
    (b"\x80\x02ctorch.serialization\nload\nq\x00X\x02\x00\x00\x00/xq\x01\x85q\x02Rq\x03.", "torch.serialization.load"),
    (b"\x80\x02cbuiltins\neval\nq\x00X\x01\x00\x00\x001q\x01\x85q\x02Rq\x03.", "builtins.eval"),
    (b"\x80\x02ctorch.fx.graph_module\nreduce_graph_module\nq\x00.", "reduce_graph_module"),
])
def test_functions_of_allowed_packages_are_refused(pkl, name):
    with pytest.raises(UnsafeModelFileError, match=name.replace(".", r"\.")):
        safe_torch_load(with_data_pkl(pkl))


def test_refusal_does_not_import_the_named_module():
    module = "torch.testing._internal.common_utils"
    if module in sys.modules:
        pytest.skip("already imported by another test")
    pkl = b"\x80\x02c" + module.encode() + b"\nTestCase\nq\x00)\x81q\x01."
    with pytest.raises(UnsafeModelFileError, match="TestCase"):
        safe_torch_load(with_data_pkl(pkl))
    assert module not in sys.modules  # a file cannot make us import modules for their side effects


def test_allow_list_decisions():
    assert _allowed("torch.nn.modules.conv.Conv2d") is nn.Conv2d
    assert _allowed("ghostify.layers.ghost.GhostModule") is ghostify.GhostModule
    assert _allowed("torch.nn.functional.relu") is torch.nn.functional.relu
    for name in ("torch.save", "torch.serialization.load", "builtins.eval", "os.system", "posix.system",
                 "subprocess.Popen", "torch.nn.Module.__init__", "torch.fx.graph_module.reduce_graph_module",
                 "torchvision.models.get_model", "timm.create_model", "ghostify.io.archive.save",
                 "torch.nn.modules.conv.NoSuchClass", "__main__.Net"):
        assert _allowed(name) is None, name


def test_foreign_class_reexported_by_an_allowed_module_is_refused(monkeypatch):
    import ghostify.layers.ghost as ghost_mod

    class Foreign(nn.Module):  # defined here (tests), merely reachable through ghostify's namespace
        pass

    monkeypatch.setattr(ghost_mod, "Foreign", Foreign, raising=False)
    assert _allowed("ghostify.layers.ghost.Foreign") is None


def test_pickled_graph_module_gets_a_hint():
    converted = ghostify.convert(small_net(), s=2, d=3)
    with pytest.raises(UnsafeModelFileError, match="ghostify.save"):
        safe_torch_load(saved(converted))


def test_custom_class_needs_trust(tmp_path):
    src = tmp_path / "safe_load_custom_mod.py"
    src.write_text("from torch import nn\nclass Net(nn.Sequential):\n    pass\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import safe_load_custom_mod

        data = saved(safe_load_custom_mod.Net(nn.Conv2d(3, 4, 3)))
        with pytest.raises(UnsafeModelFileError, match="safe_load_custom_mod.Net"):
            safe_torch_load(data)
        assert type(safe_torch_load(data, trust=True)).__name__ == "Net"
    finally:
        sys.path.remove(str(tmp_path))


# -- what must load without trust ------------------------------------------------------------------
def test_whole_torchvision_model_loads():
    import torchvision

    model = torchvision.models.mobilenet_v3_small(weights=None)
    loaded = safe_torch_load(saved(model))
    assert type(loaded) is type(model)
    x = torch.randn(1, 3, 64, 64)
    model.eval(), loaded.eval()
    torch.testing.assert_close(loaded(x), model(x))


@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "ghostnet_050", "mixnet_s", "mobilevit_xxs"])
def test_whole_timm_models_load(name):
    timm = pytest.importorskip("timm")
    model = timm.create_model(name, pretrained=False).eval()
    loaded = safe_torch_load(saved(model)).eval()
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(loaded(x), model(x))


def test_timm_conv_subclasses_load():
    # weight-standardised (BiT, NFNet) and "same"-padding (tf_ EfficientNet) convolutions
    layers = pytest.importorskip("timm.layers")
    model = nn.Sequential(layers.StdConv2d(3, 8, 3), layers.ScaledStdConv2d(8, 8, 3), layers.Conv2dSame(8, 8, 3, 2),
                          layers.StdConv2dSame(8, 4, 3)).eval()
    loaded = safe_torch_load(saved(model)).eval()
    x = torch.randn(1, 3, 16, 16)
    torch.testing.assert_close(loaded(x), model(x))


def test_state_dicts_load_in_both_formats():
    state = small_net().state_dict()
    for legacy in (False, True):
        loaded = safe_torch_load(saved(state, legacy=legacy))
        assert loaded.keys() == state.keys()


def test_legacy_whole_module_explains():
    with pytest.raises(UnsafeModelFileError, match="legacy"):
        safe_torch_load(saved(small_net(), legacy=True))


def test_module_swap_output_with_ghost_modules_loads():
    class Dynamic(nn.Module):  # data-dependent control flow: fx fails, modules are swapped in place
        def __init__(self) -> None:
            super().__init__()
            self.body = small_net()

        def forward(self, x):
            return self.body(x) if x.sum() > -1e9 else x

    converted = ghostify.convert(Dynamic(), s=2, d=3)
    body = converted.body  # an nn.Sequential holding GhostModules: all allow-listed
    loaded = safe_torch_load(saved(body))
    assert any(isinstance(m, ghostify.GhostModule) for m in loaded.modules())


# -- file forms --------------------------------------------------------------------------------------
def test_torchscript_is_recognised():
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(small_net()), buf)
    with pytest.raises(GhostifyError, match="TorchScript"):
        safe_torch_load(buf.getvalue())
    with pytest.raises(GhostifyError, match="TorchScript"):
        safe_export_load(buf.getvalue())


@pytest.mark.parametrize("data, match", [
    (b"", "empty"),
    (b"hello world" * 10, "not a PyTorch file"),
    (b"PK\x03\x04" + b"\x00" * 50, "not a readable PyTorch file"),
])
def test_garbage_bytes(data, match):
    with pytest.raises(GhostifyError, match=match):
        safe_torch_load(data)


def test_missing_and_directory(tmp_path):
    with pytest.raises(GhostifyError, match="no such file"):
        safe_torch_load(tmp_path / "missing.pt")
    with pytest.raises(GhostifyError, match="directory"):
        safe_torch_load(tmp_path)


@pytest.fixture(scope="module")
def pt2_bytes(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("pt2") / "m.pt2"
    model = small_net().eval()
    torch.export.save(torch.export.export(model, (torch.randn(1, 3, 16, 16),)), str(path))
    return path.read_bytes()


def test_export_archive_loads(pt2_bytes):
    program = safe_export_load(pt2_bytes)
    assert program.module()(torch.randn(1, 3, 16, 16)).shape == (1, 4)


def test_export_archive_with_trapped_member_runs_nothing(tmp_path, pt2_bytes):
    # torch.export.load itself falls back to torch.load(weights_only=False) for sample inputs
    marker = tmp_path / "PWNED"
    trapped = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(pt2_bytes)) as zin, zipfile.ZipFile(trapped, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if "sample_inputs" in item.filename:
                data = saved(Trap(marker))
            zout.writestr(item, data)
    load = torch.load
    with pytest.raises(UnsafeModelFileError, match="refused"):
        safe_export_load(trapped.getvalue())
    assert not marker.exists()
    assert torch.load is load  # the weights-only patch is undone


def test_export_archive_given_as_pt(pt2_bytes):
    with pytest.raises(GhostifyError, match=r"\.pt2"):
        safe_torch_load(pt2_bytes)


def test_truncated_export_archive(pt2_bytes):
    with pytest.raises(GhostifyError, match="not a torch.export"):
        safe_export_load(pt2_bytes[: len(pt2_bytes) // 2])


def test_load_model_pt2_file(tmp_path, pt2_bytes):
    path = tmp_path / "m.pt2"
    path.write_bytes(pt2_bytes)
    loaded = ghostify.load_model(str(path))
    assert loaded.kind == "file-export"
    assert loaded.model(torch.randn(1, 3, 16, 16)).shape == (1, 4)
