"""GhostNet (Table 1), the Ghost bottleneck and the CIFAR baselines of Tables 3-5."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import ghostify
from ghostify.cli import main
from ghostify.layers import GhostBottleneck, GhostModule, SqueezeExcite, make_divisible
from ghostify.models import create, list_models
from ghostify.report import count_macs, count_params

# Table 7's figures (weights M, FLOPs M) -- the issue's bars: 3% weights, 5% FLOPs.
TABLE7 = {"ghostnet_050": (2.6, 42), "ghostnet_100": (5.2, 141), "ghostnet_130": (7.3, 226)}


def test_registry_lists_every_paper_network():
    names = set(list_models())
    assert {"ghostnet_050", "ghostnet_100", "ghostnet_130", "vgg16_cifar", "resnet20_cifar", "resnet32_cifar",
            "resnet44_cifar", "resnet56_cifar", "resnet110_cifar"} <= names
    with pytest.raises(ghostify.GhostifyError, match="did you mean"):
        create("ghostnet_10")


def test_make_divisible_matches_the_official_rounding():
    # 16*0.5=8, 72*0.25=18 -> 20 (nearest multiple of 4 rounds half up), 120*1.3=156, 1.3*16=20.8 -> 20
    assert [make_divisible(v, 4) for v in (8, 18, 156, 20.8, 2, 6.5)] == [8, 20, 156, 20, 4, 8]
    assert make_divisible(10, 8) == 16  # rounding down to 8 would lose more than 10%


@pytest.mark.parametrize("name", sorted(TABLE7))
def test_ghostnet_weights_match_table7(name):
    model = create(name)
    weights, _ = TABLE7[name]
    assert abs(count_params(model) / 1e6 - weights) / weights <= 0.03


def test_ghostnet_flops_match_table7():
    # 1.0x here; all three are counted by `ghostify paper` (docs/paper-tables.md, Table 7)
    macs = count_macs(create("ghostnet_100"), torch.zeros(1, 3, 224, 224)).total
    assert abs(macs / 1e6 - 141) / 141 <= 0.05, macs


def _perturb_batchnorm(model: nn.Module) -> None:
    """Give every BN non-trivial statistics so a wrong mapping of parameters shows in the output."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)


@pytest.mark.parametrize("name", ["ghostnet_050", "ghostnet_130"])
def test_timm_state_dict_names_and_shapes_match_at_every_width(name):
    timm = pytest.importorskip("timm")
    ref, ours = timm.create_model(name).state_dict(), create(name).state_dict()
    assert [(k, v.shape) for k, v in ours.items()] == [(k, v.shape) for k, v in ref.items()]


def test_timm_state_dict_loads_and_outputs_agree():
    timm = pytest.importorskip("timm")
    name = "ghostnet_100"
    ref = timm.create_model(name).eval()
    _perturb_batchnorm(ref)
    ours = create(name).eval()
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [(k, v.shape) for k, v in ref.state_dict().items()]
    ours.load_state_dict(ref.state_dict())  # strict
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = ours(x), ref(x)
    assert a.abs().max() > 1e-3  # a real signal, not zeros
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_ghostnet_options_and_width():
    model = create("ghostnet_130", num_classes=7, in_chans=1).eval()
    assert model(torch.randn(1, 1, 64, 64)).shape == (1, 7)
    assert model.conv_stem.out_channels == 20 and model.conv_head.out_channels == 1280  # the head is not scaled
    assert all(isinstance(m, GhostModule) and m.s == 2 and m.d == 3 and m.kernel_size == (1, 1)
               for m in model.modules() if isinstance(m, GhostModule))
    with pytest.raises(ghostify.GhostifyError):
        create("ghostnet_100", num_classes=0)


def test_ghost_bottleneck_shapes_and_parts():
    block = GhostBottleneck(24, 72, 40, dw_kernel_size=5, stride=2, se_ratio=0.25).eval()
    out = block(torch.randn(2, 24, 16, 16))
    assert out.shape == (2, 40, 8, 8)
    assert block.se.conv_reduce.out_channels == 20  # 72 * 0.25 = 18, rounded to a multiple of 4
    assert isinstance(block.ghost2.primary_conv[2], nn.Identity)  # projection: no ReLU
    assert isinstance(block.ghost1.primary_conv[2], nn.ReLU)
    assert block.conv_dw.stride == (2, 2) and block.conv_dw.groups == 72
    identity = GhostBottleneck(16, 48, 16).eval()
    assert identity.conv_dw is None and identity.se is None and len(identity.shortcut) == 0
    x = torch.randn(1, 16, 8, 8)
    torch.testing.assert_close(identity(x), identity.ghost2(identity.ghost1(x)) + x)


def test_squeeze_excite_gates_with_a_hard_sigmoid():
    se = SqueezeExcite(8).eval()
    with torch.no_grad():
        se.conv_expand.weight.zero_()
        se.conv_expand.bias.fill_(3.0)  # hard_sigmoid(3) = 1: identity
    x = torch.randn(1, 8, 4, 4)
    torch.testing.assert_close(se(x), x)


@pytest.mark.parametrize("name,weights_m,macs_m", [("vgg16_cifar", 15.0, 313), ("resnet56_cifar", 0.85, 125)])
def test_cifar_baselines_match_the_paper(name, weights_m, macs_m):
    model = create(name)
    assert abs(count_params(model) / 1e6 - weights_m) / weights_m <= 0.01
    macs = count_macs(model, torch.zeros(1, 3, 32, 32)).total
    assert abs(macs / 1e6 - macs_m) / macs_m <= 0.01


def test_cifar_resnet_family_and_options():
    sizes = [count_params(create(f"resnet{d}_cifar")) for d in (20, 32, 44, 56, 110)]
    assert sizes == sorted(sizes) and 0.26e6 < sizes[0] < 0.28e6  # ResNet-20 = 0.27 M
    model = create("resnet20_cifar", in_chans=1, num_classes=4).eval()
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 4)
    assert create("vgg16_cifar", in_chans=1, num_classes=3).eval()(torch.randn(2, 1, 32, 32)).shape == (2, 3)
    from ghostify.models.cifar import ResNetCifar

    with pytest.raises(ghostify.GhostifyError, match="6n\\+2"):
        ResNetCifar(depth=51)


def test_ghostify_spec_converts_a_cifar_resnet(tmp_path, capsys):
    out = tmp_path / "r20.ghost"
    code = main(["convert", "ghostify:resnet20_cifar", "--input-size", "3,32,32", "--out", str(out)])
    assert code == 0 and out.exists()
    model = ghostify.load(out)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    assert len(ghostify.get_plan(model).converted) == 20  # 21 convs, the stem kept by default
