"""The conversion pass: policy decisions, chain folding, fallback, no mutation of the input."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import fx, nn

import ghostify
from ghostify import GhostConfig, GhostifyError, GhostModule, get_plan
from ghostify.errors import NothingToConvertError


def ghosts(model: nn.Module) -> dict[str, GhostModule]:
    return {n: m for n, m in model.named_modules() if isinstance(m, GhostModule)}


class Functional(nn.Module):
    """conv->bn->F.relu, conv->silu method-free, a conv used twice, a conv feeding two users."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.conv1 = nn.Conv2d(16, 32, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 32, 1)
        self.shared = nn.Conv2d(32, 32, 3, padding=1)
        self.branch = nn.Conv2d(32, 32, 1)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.fc = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.gelu(self.conv2(x), approximate="tanh")
        x = self.shared(self.shared(x))
        b = self.branch(x)
        x = torch.sigmoid(b) * b  # two users: nothing to fold
        x = self.dw(x).relu()
        return self.fc(x.mean((2, 3)))


def test_resnet18_paper_form_and_input_untouched():
    model = torchvision.models.resnet18(num_classes=10).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ghost = ghostify.convert(model, s=2, d=3)
    assert isinstance(ghost, fx.GraphModule)
    # the input model is not mutated
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not ghosts(model)
    plan = get_plan(ghost)
    assert plan.mode == "fx"
    by_name = {layer.name: layer for layer in plan.layers}
    assert by_name["conv1"].reason.startswith("stem")
    assert len(plan.converted) == len(plan.layers) - 1 == 19
    # conv -> bn -> relu became one paper-form module; conv2 -> bn2 (then add) the BN-only form
    assert by_name["layer1.0.conv1"].fused == ["layer1.0.bn1", "layer1.0.relu"]
    assert by_name["layer1.0.conv2"].fused == ["layer1.0.bn2"]
    g = ghosts(ghost)["layer1.0.conv1"]
    assert isinstance(g.primary_conv[1], nn.BatchNorm2d) and isinstance(g.primary_conv[2], nn.ReLU)
    # the folded BN modules are gone from the graph; the shared relu stays for the residual
    names = dict(ghost.named_modules())
    assert "layer1.0.bn1" not in names and "layer1.0.relu" in names
    x = torch.randn(2, 3, 64, 64)
    assert ghost(x).shape == model(x).shape == (2, 10)


def test_functional_activations_shared_modules_and_reasons():
    model = Functional().eval()
    ghost = ghostify.convert(model, s=2, d=3)
    plan = {layer.name: layer for layer in get_plan(ghost).layers}
    assert plan["stem"].converted is False and "stem" in plan["stem"].reason
    assert plan["dw"].converted is False and "depthwise" in plan["dw"].reason
    assert plan["conv1"].fused == ["bn1", "relu"] and plan["conv1"].form == "paper"
    assert plan["conv2"].fused == ["gelu"]
    assert isinstance(ghosts(ghost)["conv2"].primary_conv[2], nn.GELU)
    assert ghosts(ghost)["conv2"].primary_conv[2].approximate == "tanh"
    assert plan["shared"].converted and "called 2 times" in plan["shared"].note and not plan["shared"].fused
    assert plan["branch"].converted and plan["branch"].form == "linear"
    x = torch.randn(3, 3, 16, 16)
    assert ghost(x).shape == model(x).shape and ghost(x).dtype == model(x).dtype


def test_config_include_exclude_and_overrides():
    model = torchvision.models.resnet18()
    cfg = GhostConfig(s=2, d=3, exclude=["layer4.*"], overrides={"layer3.*": {"s": 4, "d": 5}})
    plan = get_plan(ghostify.convert(model, config=cfg))
    layers = {layer.name: layer for layer in plan.layers}
    assert layers["layer4.0.conv1"].converted is False and "layer4.*" in layers["layer4.0.conv1"].reason
    assert (layers["layer3.0.conv1"].s, layers["layer3.0.conv1"].d) == (4, 5)
    assert (layers["layer2.0.conv1"].s, layers["layer2.0.conv1"].d) == (2, 3)
    only = get_plan(ghostify.convert(model, s=2, d=3, include=["layer1.*"]))
    assert {layer.name for layer in only.converted} == {f"layer1.{b}.conv{c}" for b in (0, 1) for c in (1, 2)}
    # set_module_name reads like QConfigMapping
    cfg2 = GhostConfig().set_module_name("layer1.0.conv1", s=3)
    layers2 = {layer.name: layer for layer in get_plan(ghostify.convert(model, config=cfg2)).layers}
    assert layers2["layer1.0.conv1"].s == 3


def test_policy_payoff_and_small_layers():
    cfg = GhostConfig(s=2, d=3)
    # Eq. 4 with c k k = 1 * 1 * 1 < d d: a ghost would cost more than the conv
    assert not cfg.decide("x", 1, 64, (1, 1), 1).convert
    assert "Eq. 4" in cfg.decide("x", 1, 64, (1, 1), 1).reason
    assert "too small" in cfg.decide("x", 64, 1, (3, 3), 1).reason
    assert cfg.decide("x", 64, 64, (3, 3), 1).convert
    assert not GhostConfig(keep_depthwise=True).decide("x", 32, 32, (3, 3), 32).convert
    assert not GhostConfig(keep_depthwise=False).decide("x", 32, 64, (3, 3), 32).convert  # r_s = 1
    assert GhostConfig(keep_depthwise=False, d=1).decide("x", 32, 64, (3, 3), 32).convert
    with pytest.raises(GhostifyError):
        GhostConfig(overrides={"a": {"k": 3}})


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.tail = nn.Conv2d(16, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.body(self.stem(x))
        if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
            x = x * 2
        return self.bn(self.tail(x))


def test_module_swap_fallback_records_what_was_lost():
    model = Untraceable().eval()
    ghost = ghostify.convert(model, s=2, d=3)
    plan = get_plan(ghost)
    assert plan.mode == "module-swap" and type(ghost) is Untraceable
    layers = {layer.name: layer for layer in plan.layers}
    assert layers["body.0"].form == "paper" and layers["body.0"].fused == ["body.1", "body.2"]
    assert isinstance(ghost.body[1], nn.Identity) and isinstance(ghost.body[2], nn.Identity)
    assert layers["tail"].form == "linear"
    assert any("could not trace" in note for note in plan.lost_optimizations)
    assert any("1 convolution(s) outside nn.Sequential" in note for note in plan.lost_optimizations)
    x = torch.randn(2, 3, 8, 8)
    assert ghost(x).shape == model(x).shape
    assert not ghosts(model)  # input untouched


def test_grouped_convolutions_convert():
    model = torchvision.models.resnext50_32x4d()
    plan = get_plan(ghostify.convert(model, s=2, d=3))
    grouped = [layer for layer in plan.converted if layer.groups == 32]
    assert len(grouped) == 16
    ghost = ghostify.convert(torchvision.models.regnet_x_400mf(), s=2, d=3)
    assert any(layer.groups > 1 for layer in get_plan(ghost).converted)
    assert ghost(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


@pytest.mark.parametrize("name", ["mobilenet_v2", "shufflenet_v2_x0_5", "squeezenet1_1", "efficientnet_b0",
                                  "mnasnet0_5"])
def test_torchvision_models_keep_their_output(name):
    model = torchvision.models.get_model(name, weights=None).eval()
    ghost = ghostify.convert(model, s=2, d=3)
    x = torch.randn(1, 3, 96, 96)
    assert ghost(x).shape == model(x).shape
    assert ghosts(ghost)


def test_errors():
    with pytest.raises(GhostifyError, match="no convolution"):
        ghostify.convert(nn.Sequential(nn.Linear(3, 3)))
    with pytest.raises(NothingToConvertError):
        ghostify.convert(nn.Sequential(nn.Conv2d(3, 8, 3)), strict=True)  # only a stem
    with pytest.raises(GhostifyError, match="init"):
        ghostify.convert(nn.Sequential(nn.Conv2d(3, 8, 3)), init="magic")
    with pytest.raises(GhostifyError, match="torch.nn.Module"):
        ghostify.convert("resnet50")  # type: ignore[arg-type]


def test_converting_a_ghost_model_again_leaves_ghost_modules_alone():
    once = ghostify.convert(torchvision.models.resnet18(), s=2, d=3)
    twice = get_plan(ghostify.convert(once, s=2, d=3))
    assert all(not layer.converted for layer in twice.layers)
    assert {layer.reason for layer in twice.layers} >= {"already part of a Ghost module"}


class WithAuxHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Conv2d(8, 8, 3, padding=1)
        self.aux = nn.Conv2d(8, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.body(self.stem(x))
        return x + self.aux(x) if self.training else x


def test_every_convolution_gets_a_row_even_when_not_traced():
    plan = get_plan(ghostify.convert(WithAuxHead().eval()))
    rows = {layer.name: layer for layer in plan.layers}
    assert list(rows) == ["stem", "body", "aux"]
    assert "not called by the traced forward" in rows["aux"].reason


def test_a_deep_copy_keeps_the_plan_and_the_deploy_notes():
    # GraphModule.__deepcopy__ rebuilds the module: the plan must survive it (feature distillation,
    # the report and the archive read it from copies, e.g. the student of a second fine-tuning run)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1))
    ghost = ghostify.convert(net, s=2, d=3)
    twin = copy.deepcopy(ghost)
    assert [layer.name for layer in ghostify.get_plan(twin).converted] == ["3"]
    assert ghostify.get_plan(twin) is not ghostify.get_plan(ghost)  # a copy, not shared state
    deployed = copy.deepcopy(ghostify.deploy(ghost))
    assert ghostify.get_plan(deployed) is not None and deployed.ghostify_deploy_notes == []
