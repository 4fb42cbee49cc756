"""The Ghost module (§3.1): shapes, the s=1 degenerate case, argument validation."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from ghostify import GhostifyError, GhostModule
from ghostify.layers.ghost import intrinsic_channels


@st.composite
def conv_settings(draw):
    groups = draw(st.sampled_from([1, 1, 2, 4]))
    c = groups * draw(st.integers(1, 4))
    n = groups * draw(st.integers(1, 6))
    k = draw(st.sampled_from([1, 2, 3, 5]))
    stride = draw(st.integers(1, 3))
    padding = draw(st.integers(0, 2))
    dilation = draw(st.integers(1, 2))
    size = draw(st.integers(dilation * (k - 1) + 1 - 2 * padding if dilation * (k - 1) + 1 > 2 * padding else 1, 12))
    s = draw(st.integers(1, 5))
    d = draw(st.sampled_from([1, 3, 5]))
    bias = draw(st.booleans())
    return dict(c=c, n=n, k=k, stride=stride, padding=padding, dilation=dilation, groups=groups, size=max(size, 1),
                s=s, d=d, bias=bias)


@settings(max_examples=60, deadline=None)
@given(conv_settings())
def test_output_shape_equals_the_convolution(p):
    conv = nn.Conv2d(p["c"], p["n"], p["k"], p["stride"], p["padding"], p["dilation"], p["groups"], bias=p["bias"])
    x = torch.randn(2, p["c"], p["size"], p["size"])
    expected = conv(x).shape
    for norm, act in ((None, None), (nn.BatchNorm2d(p["n"]), nn.ReLU())):
        ghost = GhostModule.from_conv(conv, p["s"], p["d"], norm=norm, act=act).eval()
        assert ghost(x).shape == expected
    built = GhostModule(p["c"], p["n"], p["k"], p["stride"], p["padding"], p["dilation"], p["groups"], bias=p["bias"],
                        ratio=p["s"], dw_size=p["d"])
    assert built(x).shape == expected


@settings(max_examples=40, deadline=None)
@given(conv_settings())
def test_s1_is_the_convolution_numerically(p):
    conv = nn.Conv2d(p["c"], p["n"], p["k"], p["stride"], p["padding"], p["dilation"], p["groups"], bias=p["bias"])
    x = torch.randn(2, p["c"], p["size"], p["size"])
    ghost = GhostModule.from_conv(conv, s=1, d=p["d"])
    assert ghost.cheap_operation is None
    torch.testing.assert_close(ghost(x), conv(x), rtol=0, atol=0)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 64), s=st.integers(1, 6), groups=st.sampled_from([1, 2, 4, 8]))
def test_intrinsic_count(n, s, groups):
    n = n * groups
    m = intrinsic_channels(n, s, groups)
    assert m >= math.ceil(n / s) and m % groups == 0 and m <= n


def test_paper_form_layout_and_costs():
    conv = nn.Conv2d(64, 128, 3, padding=1, bias=False)
    ghost = GhostModule.from_conv(conv, s=2, d=3, norm=nn.BatchNorm2d(128), act=nn.ReLU())
    assert ghost.intrinsic_channels == 64 and ghost.ghost_channels == 64 and not ghost.trim
    primary, norm, act = ghost.primary_conv
    assert primary.kernel_size == (3, 3) and primary.out_channels == 64
    assert isinstance(norm, nn.BatchNorm2d) and isinstance(act, nn.ReLU)
    cheap = ghost.cheap_operation[0]
    assert cheap.groups == 64 and cheap.kernel_size == (3, 3) and cheap.out_channels == 64
    # weights: n/s c k k + (s-1) n/s d d  (Eq. 5's denominator), BN aside
    assert primary.weight.numel() + cheap.weight.numel() == 64 * 64 * 9 + 64 * 9


def test_slice_only_when_s_does_not_divide_n():
    conv = nn.Conv2d(8, 10, 1)
    assert GhostModule.from_conv(conv, s=3).trim  # m=4, 4*3=12 > 10
    assert not GhostModule.from_conv(conv, s=2).trim


def test_primary_copies_filters_of_each_group():
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=2, bias=False)
    ghost = GhostModule.from_conv(conv, s=2)
    x = torch.randn(1, 8, 6, 6)
    intrinsic = ghost.primary_conv(x)
    full = conv(x)
    # filters 0,1 read group 0 and filters 4,5 read group 1 in the original
    torch.testing.assert_close(intrinsic, full[:, [0, 1, 4, 5]])


@pytest.mark.parametrize("s,d,msg", [(0, 3, "ratio s"), (2.5, 3, "ratio s"), ("2", 3, "ratio s"), (True, 3, "ratio s"),
                                     (2, 0, "cheap kernel d"), (2, 4, "odd"), (2, 1.0, "cheap kernel d")])
def test_bad_arguments_are_clear(s, d, msg):
    with pytest.raises(GhostifyError, match=msg):
        GhostModule(8, 8, ratio=s, dw_size=d)
    with pytest.raises(GhostifyError, match=msg):
        GhostModule.from_conv(nn.Conv2d(8, 8, 1), s, d)


def test_timm_conv_subclasses_keep_their_meaning():
    timm_layers = pytest.importorskip("timm.layers")
    x = torch.randn(2, 8, 9, 9)
    for cls in (timm_layers.Conv2dSame, timm_layers.StdConv2d, timm_layers.StdConv2dSame,
                timm_layers.ScaledStdConv2d, timm_layers.ScaledStdConv2dSame):
        conv = cls(8, 12, 3, stride=2)
        ghost = GhostModule.from_conv(conv, s=2, d=3)
        assert type(ghost.primary_conv[0]) is cls
        torch.testing.assert_close(ghost.primary_conv(x), conv(x)[:, :6], msg=cls.__name__)
        assert ghost(x).shape == conv(x).shape
        assert torch.equal(GhostModule.from_conv(conv, s=1)(x), conv(x))


def test_state_dict_matches_timm_ghost_module():
    timm_ghostnet = pytest.importorskip("timm.models.ghostnet")
    theirs = timm_ghostnet.GhostModule(16, 24, kernel_size=1, ratio=2, dw_size=3)
    ours = GhostModule(16, 24, kernel_size=1, ratio=2, dw_size=3)
    assert {k: v.shape for k, v in theirs.state_dict().items()} == {k: v.shape for k, v in ours.state_dict().items()}
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 16, 8, 8)
    torch.testing.assert_close(ours.eval()(x), theirs.eval()(x))


def test_channel_order_slot_is_created_on_load():
    a = GhostModule(4, 6, ratio=2)
    a.channel_order = torch.tensor([5, 4, 3, 2, 1, 0])
    b = GhostModule(4, 6, ratio=2)
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 4, 5, 5)
    torch.testing.assert_close(a.eval()(x), b.eval()(x))
