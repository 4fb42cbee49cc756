"""Property tests (hypothesis): random small CNNs, the model-spec parser, the report parser (issue 6).

* random CNNs from conv / BN / activation / pool / residual add / concat blocks: conversion never
  crashes, keeps the output shape and dtype; s=1 preserves the function;
* ``load_model`` / ``parse_input_size`` raise only ``GhostifyError`` on garbage;
* ``ghostify check`` answers garbage reports with exit code 0, 1 or 2 and never a traceback.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import ghostify
from ghostify.errors import GhostifyError
from ghostify.layers.ghost import GhostModule

# GHOSTIFY_FUZZ_EXAMPLES=500 for a longer hunt; 25 keeps the suite fast
FUZZ = settings(max_examples=int(os.environ.get("GHOSTIFY_FUZZ_EXAMPLES", "25")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

ACTS = [nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish, nn.GELU, nn.LeakyReLU, nn.Sigmoid, None]


class Block(nn.Module):
    """conv (+BN) (+act), optionally wrapped as a residual add or a concat with its input."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int, groups: int, bn: bool, act: type | None,
                 wrap: str, functional_act: bool) -> None:
        super().__init__()
        self.wrap = wrap
        if wrap == "add":  # the branch must keep the channels
            c_out = c_in
        if wrap in ("add", "cat"):  # and the spatial size
            stride = 1
        self.conv = nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2, groups=groups, bias=not bn)
        self.bn = nn.BatchNorm2d(c_out) if bn else nn.Identity()
        self.act = act() if (act is not None and not functional_act) else nn.Identity()
        self.functional_act = functional_act and act is not None
        self.c_out = c_out + (c_in if wrap == "cat" else 0)
        self.stride = 1 if wrap in ("add", "cat") else stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.bn(self.conv(x)))
        if self.functional_act:
            y = torch.relu(y)
        if self.wrap == "add":
            return x + y
        if self.wrap == "cat":
            return torch.cat([x, y], dim=1)
        return y


@st.composite
def cnn(draw):
    """A random small CNN (and its input size) built from Block, pooling and an optional head."""
    c = draw(st.sampled_from([1, 3, 4]))
    h = draw(st.integers(6, 16))
    layers: list[nn.Module] = []
    channels, size = c, h
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["block", "block", "block", "pool"]))
        if kind == "pool":
            if size >= 4:
                layers.append(draw(st.sampled_from([nn.MaxPool2d(2), nn.AvgPool2d(2)])))
                size //= 2
            continue
        wrap = draw(st.sampled_from(["plain", "plain", "add", "cat"]))
        k = draw(st.sampled_from([1, 3, 5]))
        stride = draw(st.sampled_from([1, 1, 2])) if size >= 4 else 1
        c_out = draw(st.sampled_from([2, 5, 8, 12, 16]))
        groups = 1
        if wrap != "add":
            choice = draw(st.sampled_from(["dense", "dense", "grouped", "depthwise"]))
            if choice == "depthwise":
                c_out, groups = channels, channels
            elif choice == "grouped":
                groups = math.gcd(channels, c_out)
        elif draw(st.booleans()):
            groups = channels  # depthwise residual branch
        block = Block(channels, c_out, k, stride, groups, draw(st.booleans()), draw(st.sampled_from(ACTS)), wrap,
                      draw(st.booleans()))
        layers.append(block)
        channels = block.c_out
        size = (size + 2 * (k // 2) - k) // block.stride + 1
    layers.append(nn.Conv2d(channels, draw(st.sampled_from([4, 8])), 3, padding=1))  # at least one conv
    if draw(st.booleans()):
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(layers[-1].out_channels, 3)]
    model = nn.Sequential(*layers)
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    return model.to(dtype).eval(), (c, h, h), dtype


def _bn_statistics(model: nn.Module) -> None:
    """Non-trivial BatchNorm statistics, so folding mistakes would show."""
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)


@FUZZ
@given(data=cnn(), s=st.integers(1, 4), d=st.sampled_from([1, 3, 5]), convert_stem=st.booleans(),
       convert_dw=st.booleans())
def test_random_cnn_converts_keeping_shape_and_dtype(data, s, d, convert_stem, convert_dw):
    model, size, dtype = data
    x = torch.randn(2, *size, dtype=dtype)
    config = ghostify.GhostConfig(s=s, d=d, keep_stem=not convert_stem, keep_depthwise=not convert_dw)
    ghost = ghostify.convert(model, config=config).eval()
    with torch.no_grad():
        y0, y1 = model(x), ghost(x)
    assert y1.shape == y0.shape and y1.dtype == y0.dtype
    assert torch.isfinite(y1).all()
    plan = ghostify.get_plan(ghost)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(plan.layers) == len(convs)  # every convolution decided, with a reason when left alone
    assert all(layer.converted or layer.reason for layer in plan.layers)
    assert sum(isinstance(m, GhostModule) for m in ghost.modules()) == len(plan.converted)
    if s == 1:
        assert not plan.converted


@FUZZ
@given(data=cnn())
def test_convert_with_s1_preserves_the_function(data):
    model, size, dtype = data
    _bn_statistics(model)
    x = torch.randn(2, *size, dtype=dtype)
    ghost = ghostify.convert(model, s=1, d=3).eval()
    with torch.no_grad():
        torch.testing.assert_close(ghost(x), model(x), rtol=0, atol=0)


@FUZZ
@given(c=st.integers(1, 12), n_per_group=st.integers(1, 6), groups=st.integers(1, 4), k=st.sampled_from([1, 3, 5]),
       stride=st.integers(1, 2), dilation=st.integers(1, 2), bias=st.booleans(), h=st.integers(5, 12),
       d=st.sampled_from([1, 3, 5]), with_bn_act=st.booleans())
def test_ghost_module_from_conv_s1_equals_the_conv(c, n_per_group, groups, k, stride, dilation, bias, h, d,
                                                   with_bn_act):
    c = c * groups
    conv = nn.Conv2d(c, n_per_group * groups, k, stride=stride, padding=k // 2 * dilation, dilation=dilation,
                     groups=groups, bias=bias).double()
    norm = nn.BatchNorm2d(conv.out_channels).double().eval() if with_bn_act else None
    act = nn.ReLU() if with_bn_act else None
    if norm is not None:
        _bn_statistics(nn.Sequential(norm))
    ghost = GhostModule.from_conv(conv, 1, d, norm=norm, act=act).double().eval()
    x = torch.randn(2, c, h, h, dtype=torch.float64)
    ref = conv(x) if norm is None else act(norm(conv(x)))
    torch.testing.assert_close(ghost(x), ref)


# -- parsers ---------------------------------------------------------------------------------------
SPEC_TEXT = st.one_of(
    st.text(max_size=40),
    st.builds(lambda p, n: f"{p}:{n}", st.sampled_from(["torchvision", "timm", "ghostify", "", " ", "tv"]),
              st.text(max_size=20)),
    st.builds(lambda n, suf: n + suf, st.text(max_size=12), st.sampled_from(["", ".pt", ".pth", ".pt2", ".ghost"])),
)


@FUZZ
@given(spec=SPEC_TEXT)
def test_model_spec_parser_raises_only_ghostify_error(spec, monkeypatch):
    import importlib

    from ghostify.io import registry as specs  # the named builders import factories

    real_import = importlib.import_module

    def no_foreign_imports(name: str, package: str | None = None):
        # garbage like "os:abort" must not run anything: only the model libraries may be imported
        if name.split(".")[0] in ("torchvision", "timm", "ghostify"):
            return real_import(name, package)
        raise ImportError(f"No module named {name!r}")

    # only the spec parser's own imports are filtered (torch's lazy imports must keep working)
    monkeypatch.setattr(specs, "importlib", SimpleNamespace(import_module=no_foreign_imports))
    with tempfile.TemporaryDirectory() as tmp:
        cwd = os.getcwd()
        os.chdir(tmp)  # relative garbage paths resolve in an empty directory
        try:
            try:
                loaded = ghostify.load_model(spec)
            except GhostifyError as exc:
                assert str(exc)
            else:  # a random string that happens to name a real model
                assert isinstance(loaded.model, nn.Module)
        finally:
            os.chdir(cwd)


@FUZZ
@given(value=st.one_of(st.none(), st.text(max_size=30),
                       st.lists(st.one_of(st.integers(-5, 500), st.floats(allow_nan=True), st.text(max_size=3),
                                          st.none(), st.booleans()), max_size=5),
                       st.integers(), st.floats()))
def test_input_size_parser_raises_only_ghostify_error(value):
    from ghostify.io.specs import parse_input_size

    try:
        size = parse_input_size(value)
    except GhostifyError:
        return
    # L, C,L, C,H,W or C,T,H,W: 1 to 4 positive integers
    assert size is None or (1 <= len(size) <= 4 and all(isinstance(v, int) and v >= 1 for v in size))


JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True, allow_infinity=True),
              st.text(max_size=8)),
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.sampled_from(["totals", "macs_before", "macs_after", "params_before",
                                                                "params_after", "latency_ratio", "accuracy_drop",
                                                                "student_acc", "teacher_acc", "finetune", "latency",
                                                                "kind", "x"]), children, max_size=6)),
    max_leaves=20,
)


@FUZZ
@given(report=st.one_of(JSON.map(lambda v: json.dumps(v).encode()), st.binary(max_size=200),
                        st.text(max_size=200).map(str.encode)),
       gates=st.lists(st.sampled_from(["--min-macs-reduction", "--min-params-reduction", "--max-latency-ratio",
                                       "--max-accuracy-drop"]), min_size=0, max_size=3, unique=True),
       threshold=st.sampled_from(["1", "0.5", "2", "0", "-1", "nan", "x"]))
def test_check_answers_garbage_with_0_1_or_2(report, gates, threshold, capsys):
    from ghostify.cli import main

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "report.json"
        path.write_bytes(report)
        args = ["check", str(path)]
        for gate in gates:
            args += [gate, threshold]
        rc = main(args)
    _, err = capsys.readouterr()
    assert rc in (0, 1, 2), err
    assert "Traceback" not in err and "unexpected" not in err
    if rc == 2:
        assert len(err.strip().splitlines()) == 1


def test_fuzz_sanity_a_known_good_report_passes(capsys, tmp_path):
    # guards the property above against passing because everything is rejected
    from ghostify.cli import main

    path = tmp_path / "r.json"
    path.write_text(json.dumps({"totals": {"macs_before": 10, "macs_after": 5}}))
    assert main(["check", str(path), "--min-macs-reduction", "2"]) == 0
    assert main(["check", str(path), "--min-macs-reduction", "2.1"]) == 1
    capsys.readouterr()


@pytest.mark.parametrize("s", [2, 3])
def test_fuzz_sanity_random_cnn_really_converts(s):
    # guards the CNN property against a generator that never yields convertible layers
    model = nn.Sequential(Block(3, 8, 3, 1, 1, True, nn.ReLU, "plain", False),
                          Block(8, 16, 3, 1, 1, True, nn.ReLU, "cat", False),
                          Block(24, 24, 3, 1, 1, True, None, "add", True), nn.Conv2d(24, 8, 3, padding=1)).eval()
    ghost = ghostify.convert(model, s=s, d=3)
    assert len(ghostify.get_plan(ghost).converted) >= 3
    x = torch.randn(1, 3, 8, 8)
    assert ghost(x).shape == model(x).shape


def test_conv_whose_weight_the_forward_reads_is_left_alone():
    # found by bench/zoo_sweep.py on timm's edgenext: forward reads conv.weight.dtype
    class ReadsWeight(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 8, 3, padding=1)
            self.b = nn.Conv2d(8, 16, 3, padding=1)
            self.c = nn.Conv2d(16, 16, 3, padding=1)

        def forward(self, x):
            y = self.b(self.a(x))
            return self.c(y.to(self.c.weight.dtype))

    model = ReadsWeight().eval()
    ghost = ghostify.convert(model, s=2, d=3)
    plan = {layer.name: layer for layer in ghostify.get_plan(ghost).layers}
    assert plan["b"].converted and not plan["c"].converted and "directly" in plan["c"].reason
    x = torch.randn(1, 3, 8, 8)
    assert ghost(x).shape == model(x).shape
