"""Pretrained weights from the ecosystem's caches (torch hub, Hugging Face) or a local file; never a download.

Every test runs with the ``offline`` fixture: empty caches in tmp_path and a tripwire on any
download, so a test that would reach for the network fails at once instead of hanging.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
import torchvision

import ghostify
from ghostify.cli import main
from ghostify.errors import GhostifyError, MissingWeightsError
from ghostify.io.registry import build_source

R18_FILE = "resnet18-f37072fd.pth"  # the name torchvision's ResNet18_Weights.IMAGENET1K_V1 is cached under


def _fake_pretrained(checkpoints: Path, name: str = R18_FILE) -> dict[str, torch.Tensor]:
    """A state_dict saved where torch hub caches the real one: a random init, nudged off its defaults."""
    torch.manual_seed(3)
    state = torchvision.models.resnet18().state_dict()
    state["bn1.running_mean"] += 0.5  # a buffer a fresh build would not have either
    checkpoints.mkdir(parents=True, exist_ok=True)
    torch.save(state, checkpoints / name)
    return state


def _one_line(rc: int, err: str) -> str:
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_torchvision_weights_come_from_torch_hubs_cache(offline):
    state = _fake_pretrained(offline)
    loaded = ghostify.load_model("torchvision:resnet18", weights="IMAGENET1K_V1")
    assert loaded.weights == "ResNet18_Weights.IMAGENET1K_V1"
    got = loaded.model.state_dict()
    for key in ("conv1.weight", "fc.weight", "bn1.running_mean", "layer4.1.conv2.weight"):
        torch.testing.assert_close(got[key], state[key], rtol=0, atol=0)
    # DEFAULT and the enum's full name name the same file; no hash is checked (torch hub checks
    # one only when it downloads), so this random file is taken as it is
    assert ghostify.load_model("torchvision:resnet18", weights="DEFAULT").weights == loaded.weights
    assert ghostify.load_model("torchvision:resnet18", pretrained=True).weights == loaded.weights
    assert ghostify.load_model("torchvision:resnet18").weights is None  # random init


def test_cli_convert_with_cached_weights_archives_them(offline, tmp_path, capsys):
    state = _fake_pretrained(offline)
    out, report = tmp_path / "r18.ghost", tmp_path / "r18.json"
    rc = main(["convert", "torchvision:resnet18", "--weights", "IMAGENET1K_V1", "--input-size", "3,32,32",
               "--init", "random", "--out", str(out), "--json", str(report), "--no-layers"])
    assert rc == 0, capsys.readouterr().err
    recipe = json.loads(zipfile.ZipFile(out).read("recipe.json"))
    assert recipe["weights"] == "ResNet18_Weights.IMAGENET1K_V1" and recipe["source"] == "torchvision:resnet18"
    assert json.loads(report.read_text())["weights"] == "ResNet18_Weights.IMAGENET1K_V1"
    archived = ghostify.load(out).state_dict()
    # the layers the policy keeps (the stem, the classifier, the stem's BN) hold the cached weights
    for key in ("conv1.weight", "fc.weight", "fc.bias", "bn1.running_mean", "bn1.weight"):
        torch.testing.assert_close(archived[key], state[key], rtol=0, atol=0)
    # and a converted layer's primary convolution starts from them only with --init transfer: here, random
    assert not torch.equal(archived["layer1.0.conv1.primary_conv.0.weight"], state["layer1.0.conv1.weight"][:32])


def test_missing_torchvision_weights_is_one_line_saying_where(offline, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where the default output would go
    start = time.perf_counter()
    rc = main(["convert", "torchvision:resnet18", "--weights", "IMAGENET1K_V1", "--input-size", "3,32,32"])
    line = _one_line(rc, capsys.readouterr().err)
    assert time.perf_counter() - start < 30  # no download attempt waiting on a network
    for needle in (R18_FILE, str(offline), "https://download.pytorch.org/models/" + R18_FILE, "--weights PATH"):
        assert needle in line, (needle, line)
    assert "URLError" not in line and not any(tmp_path.glob("*.ghost"))


def test_missing_weights_subprocess_exits_2_with_one_line(tmp_path):
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch"), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "ghostify", "convert", "torchvision:resnet18", "--weights",
                           "IMAGENET1K_V1"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120,
                          stdin=subprocess.DEVNULL)
    line = _one_line(proc.returncode, proc.stderr)
    assert line.startswith("ghostify: error: torchvision:resnet18 IMAGENET1K_V1 needs resnet18-f37072fd.pth in "
                           f"{tmp_path / 'torch' / 'hub' / 'checkpoints'}"), line
    assert proc.stdout == "" and not any(tmp_path.glob("*.ghost"))


def test_missing_weights_error_names_file_and_place(offline):
    with pytest.raises(MissingWeightsError) as info:
        ghostify.load_model("torchvision:deeplabv3_mobilenet_v3_large", weights="DEFAULT")
    assert info.value.wanted == "deeplabv3_mobilenet_v3_large-fc3c493d.pth" and info.value.place == offline
    assert info.value.param == "weights"


def test_unknown_weight_name_lists_the_choices(offline, capsys):
    line = _one_line(main(["analyze", "torchvision:resnet18", "--weights", "IMAGENET1K_V9"]),
                     capsys.readouterr().err)
    assert "has no weights 'IMAGENET1K_V9' (it has DEFAULT, IMAGENET1K_V1)" in line


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_torchvision_weights_from_a_local_file(offline, tmp_path, suffix):
    state = torchvision.models.resnet18(num_classes=1000).state_dict()
    path = tmp_path / f"mine{suffix}"
    if suffix == ".pth":
        torch.save({"state_dict": state, "epoch": 3}, path)  # a training checkpoint nests the weights
    else:
        from safetensors.torch import save_file

        save_file(state, str(path))
    loaded = ghostify.load_model("torchvision:resnet18", weights=str(path))
    assert loaded.weights == str(path.resolve())
    torch.testing.assert_close(loaded.model.state_dict()["fc.weight"], state["fc.weight"], rtol=0, atol=0)


def test_a_weights_file_that_does_not_fit_is_one_line(offline, tmp_path, capsys):
    path = tmp_path / "r34.pth"
    torch.save(torchvision.models.resnet34().state_dict(), path)
    line = _one_line(main(["analyze", "torchvision:resnet18", "--weights", str(path)]), capsys.readouterr().err)
    assert "does not fit torchvision:resnet18" in line and "Unexpected key(s)" in line


def test_weights_file_is_never_unpickled(offline, tmp_path, capsys):
    class Trap:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "trap.pth"
    torch.save({"fc.weight": torch.zeros(1), "x": Trap()}, path)
    line = _one_line(main(["analyze", "torchvision:resnet18", "--weights", str(path)]), capsys.readouterr().err)
    # and no --trust hint: a weights file is never unpickled, trusted or not
    assert "refused: it references" in line and "system" in line and "--trust" not in line


def test_weights_are_for_named_models(offline, tmp_path, capsys):
    src = tmp_path / "m.pt"
    torch.save(torchvision.models.resnet18(), src)
    line = _one_line(main(["analyze", str(src), "--weights", "IMAGENET1K_V1"]), capsys.readouterr().err)
    assert "carries its own weights" in line
    line = _one_line(main(["analyze", "torchvision:resnet18", "--weights", str(tmp_path / "nothere.pth")]),
                     capsys.readouterr().err)
    assert line.endswith("nothere.pth: no such weights file")
    line = _one_line(main(["analyze", "timm:test_resnet", "--weights", "IMAGENET1K_V1"]), capsys.readouterr().err)
    assert "must be a local file for a timm model" in line and "pass --pretrained" in line


def _hf_cache_entry(root: Path, repo: str, filename: str) -> Path:
    """Lay out ``repo``'s ``filename`` as huggingface_hub caches it (refs/main -> snapshots/<rev>/)."""
    base = root / f"models--{repo.replace('/', '--')}"
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text("0123abcd")
    snap = base / "snapshots" / "0123abcd"
    snap.mkdir(parents=True)
    return snap / filename


def test_timm_pretrained_from_the_hugging_face_cache(offline, tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(5)
    state = timm.create_model("test_resnet").state_dict()
    save_file(state, str(_hf_cache_entry(tmp_path / "hf", "timm/test_resnet.r160_in1k", "model.safetensors")))
    loaded = ghostify.load_model("timm:test_resnet", pretrained=True)
    assert loaded.weights == "hf-hub:timm/test_resnet.r160_in1k"
    torch.testing.assert_close(loaded.model.state_dict()["fc.weight"], state["fc.weight"], rtol=0, atol=0)


def test_timm_pretrained_missing_says_which_repo(offline, capsys):
    start = time.perf_counter()
    line = _one_line(main(["analyze", "timm:test_resnet", "--pretrained"]), capsys.readouterr().err)
    assert time.perf_counter() - start < 30
    assert "timm/test_resnet.r160_in1k" in line and "model.safetensors" in line and "--weights PATH" in line


def test_timm_weights_from_a_local_file(offline, tmp_path):
    import timm

    state = timm.create_model("test_resnet").state_dict()
    path = tmp_path / "tr.pth"
    torch.save(state, path)
    loaded = ghostify.load_model("timm:test_resnet", weights=path)
    torch.testing.assert_close(loaded.model.state_dict()["fc.weight"], state["fc.weight"], rtol=0, atol=0)
    with pytest.raises(GhostifyError, match="must be a local file"):
        ghostify.load_model("timm:test_resnet", weights="IMAGENET1K_V1")


def test_archive_rebuilds_the_architecture_its_weights_imply(offline):
    # torchvision's DeepLabV3 weights add an aux head; rebuilding an archive reads no weights file
    plain = build_source("torchvision:deeplabv3_mobilenet_v3_large").model
    rebuilt = build_source("torchvision:deeplabv3_mobilenet_v3_large", weights="DEFAULT", architecture_only=True)
    assert plain.aux_classifier is None and rebuilt.model.aux_classifier is not None
    assert rebuilt.weights == "DeepLabV3_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1"
    inception = build_source("torchvision:inception_v3", weights="IMAGENET1K_V1", architecture_only=True).model
    assert inception.transform_input is True  # no parameter says so: only the architecture can
    assert not offline.exists() or not any(offline.iterdir())  # nothing was fetched


def test_no_output_replaces_the_weights_file(offline, tmp_path, capsys):
    path = tmp_path / "w.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    before = path.read_bytes()
    for command in ("convert", "analyze"):
        rc = main([command, "torchvision:resnet18", "--weights", str(path), "--input-size", "3,32,32",
                   "--json", str(path), "--force", "--no-layers"] + (["--out", str(tmp_path / "o.ghost")]
                                                                    if command == "convert" else []))
        line = _one_line(rc, capsys.readouterr().err)
        assert "is also an input" in line
    assert path.read_bytes() == before and not (tmp_path / "o.ghost").exists()


def test_an_unknown_timm_tag_is_one_line(offline, capsys):
    line = _one_line(main(["analyze", "timm:test_resnet.bogus"]), capsys.readouterr().err)
    assert "timm model 'test_resnet' has no pretrained tag 'bogus'" in line
    assert ghostify.load_model("timm:test_resnet.r160_in1k").kind == "timm"  # a real tag builds


def test_pretrained_weights_make_auto_init_transfer(offline):
    _fake_pretrained(offline)
    loaded = ghostify.load_model("torchvision:resnet18", weights="IMAGENET1K_V1")
    init, reason = loaded.default_init()
    assert init == "transfer" and "pretrained weights" in reason
    assert ghostify.load_model("torchvision:resnet18").default_init()[0] == "random"
