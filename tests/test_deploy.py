"""ghostify.deploy: the deployment form computes the training form's function (eval mode)."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import fx, nn

import ghostify
from ghostify.export.deploy import DeployConfig, deploy
from ghostify.layers.ghost import FusedGhost, GhostModule


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine terms, so folding mistakes show."""
    gen = torch.Generator().manual_seed(seed)
    for mod in model.modules():
        if isinstance(mod, nn.BatchNorm2d):
            n = mod.num_features
            mod.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
            mod.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            mod.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            mod.bias.data.copy_(torch.rand(n, generator=gen) - 0.5)
    return model.eval()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


class Block(nn.Module):
    """A ResNet basic block (identity or 1x1 downsample shortcut)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(y + (x if self.down is None else self.down(x)))


class TinyResNet(nn.Module):
    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.layer1 = nn.Sequential(Block(width, width), Block(width, width))
        self.layer2 = nn.Sequential(Block(width, 2 * width, 2), Block(2 * width, 2 * width))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.layer2(self.layer1(self.stem(x)))), 1))


class SEHead(nn.Module):
    """Ghost output read by ops the pass does not split (mean, mul, view): must materialise."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.a = nn.Conv2d(16, 32, 1)
        self.bn = nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.a(self.conv(x))))
        gate = torch.sigmoid(self.fc(y.mean((2, 3))))
        return (y * gate[:, :, None, None]).flatten(1)


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
            x = x * 1.0
        return self.body(self.c1(x))


def _check_same(model: nn.Module, size: tuple[int, ...] = (2, 3, 32, 32), tol: float = 1e-5,
                config: DeployConfig | None = None) -> nn.Module:
    model = randomize_bn(model)
    dep = deploy(model, config)
    x = torch.randn(*size)
    with torch.no_grad():
        ref, got = model(x), dep(x)
    assert rel_err(got, ref) <= tol
    return dep


def _ops(gm: nn.Module) -> list[str]:
    assert isinstance(gm, fx.GraphModule)
    out = []
    for n in gm.graph.nodes:
        out.append(type(gm.get_submodule(n.target)).__name__ if n.op == "call_module" else str(n.target))
    return out


@pytest.mark.parametrize("s", [2, 4])
def test_resnet_deploy_same_function_and_concat_free(s: int) -> None:
    ghost = ghostify.convert(TinyResNet(), s, 3)
    dep = _check_same(ghost)
    ops = _ops(dep)
    assert "BatchNorm2d" not in ops  # every BN folded
    assert not any("GhostModule" in o for o in ops)
    # every convolution is dense or truly depthwise: onnxruntime's NCHWc kernels take no channel multiplier
    for conv in (m for m in dep.modules() if isinstance(m, nn.Conv2d)):
        assert conv.groups == 1 or conv.groups == conv.in_channels == conv.out_channels
    # the parts stay apart through every block and the pooling; only the pooled 1x1 maps are joined
    cats = [n for n in dep.graph.nodes if n.target is torch.cat]
    assert len(cats) == 1
    assert all(isinstance(dep.get_submodule(a.target), nn.AdaptiveAvgPool2d) for a in cats[0].args[0])


@pytest.mark.parametrize("switch", ["split_sum", "identity_add", "split_multiplier", "concat_before_other_acts"])
def test_each_rule_switched_off_keeps_the_function(switch: str) -> None:
    """bench/latency.py's ablation turns the rules off one at a time: each variant must stay exact."""
    model = TinyResNet()
    if switch == "concat_before_other_acts":  # the rule is about activations onnxruntime cannot fuse with a sum
        for block in (*model.layer1, *model.layer2):
            block.relu = nn.ReLU6()
    ghost = ghostify.convert(model, 4, 3)
    on = _ops(_check_same(ghost))
    off = _ops(_check_same(ghost, config=DeployConfig().replace(**{switch: False})))
    assert off != on  # the switch does change the graph


def test_original_model_deploys_too() -> None:
    dep = _check_same(TinyResNet())
    assert "BatchNorm2d" not in _ops(dep)


def test_input_untouched_and_training_form_kept() -> None:
    ghost = randomize_bn(ghostify.convert(TinyResNet(), 2, 3)).train()
    before = copy.deepcopy(ghost.state_dict())
    dep = deploy(ghost)
    assert ghost.training and not dep.training
    for k, v in ghost.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert any(isinstance(m, GhostModule) for m in ghost.modules())


def test_channel_order_folded_away() -> None:
    ghost = ghostify.convert(TinyResNet(), 2, 3)
    gen = torch.Generator().manual_seed(1)
    perms = {n: torch.randperm(n, generator=gen) for n in (16, 32)}  # shared: residual operands agree
    for mod in ghost.modules():
        if isinstance(mod, GhostModule):
            mod.channel_order = perms[mod.out_channels].clone()
    dep = _check_same(ghost)
    # the permutation lives in the weights of the consumers; only the pooled 1x1 head is reordered
    selects = [n for n in dep.graph.nodes if n.target == "index_select"]
    assert len(selects) == 1
    cat = selects[0].args[0]
    assert all(isinstance(dep.get_submodule(a.target), nn.AdaptiveAvgPool2d) for a in cat.args[0])


def test_distinct_channel_orders_still_same_function() -> None:
    ghost = ghostify.convert(TinyResNet(), 2, 3)
    gen = torch.Generator().manual_seed(2)
    for mod in ghost.modules():
        if isinstance(mod, GhostModule):
            mod.channel_order = torch.randperm(mod.out_channels, generator=gen)
    _check_same(ghost)  # residual operands disagree: materialised in the original order


def test_trim_keeps_meaning() -> None:
    # s=3 does not divide 16/32: those modules keep concat + slice, still the same function
    dep = _check_same(ghostify.convert(TinyResNet(), 3, 3))
    assert any("does not divide" in n for n in dep.ghostify_deploy_notes)


def test_materialises_for_unsplittable_consumers() -> None:
    ghost = ghostify.convert(SEHead(), 2, 3, config=ghostify.GhostConfig(s=2, d=3, keep_stem=True))
    _check_same(ghost)


def test_untraceable_model_falls_back_to_folded_concat() -> None:
    ghost = ghostify.convert(Untraceable(), 2, 3)
    dep = _check_same(ghost, size=(1, 3, 16, 16))
    assert any(isinstance(m, FusedGhost) for m in dep.modules())
    assert dep.ghostify_deploy_notes


def test_torchvision_mobilenet_v2_deploys() -> None:
    import torchvision

    _check_same(ghostify.convert(torchvision.models.mobilenet_v2(width_mult=0.35), 2, 3), size=(1, 3, 64, 64))


@settings(max_examples=8, deadline=None)
@given(s=st.integers(1, 4), d=st.sampled_from([1, 3, 5]), cout=st.sampled_from([8, 12, 16, 24]),
       act=st.sampled_from(["relu", "none", "hardswish"]), residual=st.booleans())
def test_property_single_ghost(s: int, d: int, cout: int, act: str, residual: bool) -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, cout, 3, padding=1)
            self.conv = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(cout)
            self.act = {"relu": nn.ReLU(), "none": nn.Identity(), "hardswish": nn.Hardswish()}[act]
            self.head = nn.Conv2d(cout, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.stem(x)
            y = self.act(self.bn(self.conv(x)))
            return self.head(y + x if residual else y)

    torch.manual_seed(0)
    _check_same(ghostify.convert(Net(), s, d), size=(1, 3, 12, 12))


def test_parts_padded_to_the_block_size_without_changing_the_function() -> None:
    # n=56 -> m=28 intrinsic maps: padded to 32 so onnxruntime keeps its NCHWc layout
    ghost = ghostify.convert(TinyResNet(width=56), 2, 3)
    dep = _check_same(ghost)
    dw = [m for m in dep.modules() if isinstance(m, nn.Conv2d) and m.groups > 1 and m.kernel_size == (3, 3)]
    assert dw and all(m.out_channels % 16 == 0 for m in dw)
    plain = deploy(randomize_bn(ghost), align=0)
    dw0 = [m for m in plain.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert any(m.out_channels % 16 for m in dw0)
    # a tiny m is not padded (12 -> 16 would cost a third more maps than it saves)
    small = deploy(randomize_bn(ghostify.convert(TinyResNet(width=24), 2, 3)))
    assert any(m.out_channels == 12 for m in small.modules() if isinstance(m, nn.Conv2d) and m.groups > 1)
