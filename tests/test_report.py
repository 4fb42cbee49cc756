"""Counting convention, Eq. 4/5, and the JSON report's stable keys."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import ghostify
from ghostify.policy import theoretical_compression, theoretical_speedup
from ghostify.report import build_report, count_macs, count_params
from ghostify.report.counting import _count_hooks


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(16)
        self.conv = nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn0(self.stem(x)))
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc(x.mean((2, 3)))


def test_macs_are_conv_and_linear_multiply_accumulates_only():
    x = torch.randn(1, 3, 16, 16)
    # stem: 16 maps of 16x16, each 3*3*3 MACs; conv: 32 maps of 8x8, each 16*3*3; fc 32*10; BN/ReLU/mean free
    expected = 16 * 16 * 16 * 27 + 32 * 8 * 8 * 144 + 320
    fv = count_macs(Toy(), x)
    assert fv.counter == "fvcore" and fv.total == expected
    assert fv.by_module["conv"] == 32 * 8 * 8 * 144
    assert _count_hooks(Toy(), x).total == expected  # the fallback counter agrees


def test_eq4_eq5_exact_values():
    # Eq. 4: c k k / (c k k / s + (s-1)/s d d); for c=64, k=3, s=2, d=3: 576 / (288 + 4.5)
    assert theoretical_speedup(64, (3, 3), 2, 3) == pytest.approx(576 / 292.5)
    assert theoretical_compression(64, (3, 3), 2, 3) == theoretical_speedup(64, (3, 3), 2, 3)
    # tends to s as c grows (the paper's approximation), grouped convs read c/groups inputs
    assert theoretical_speedup(4096, (3, 3), 4, 3) == pytest.approx(4, rel=0.01)
    assert theoretical_speedup(64, (3, 3), 2, 3, groups=4) == theoretical_speedup(16, (3, 3), 2, 3)


def test_report_layers_totals_and_json_keys():
    model = Toy().eval()
    ghost = ghostify.convert(model, s=2, d=3)
    report = build_report(model, ghost, (3, 16, 16), "toy")
    data = json.loads(report.to_json())
    assert {"params_before", "params_after", "macs_before", "macs_after", "theoretical_speedup",
            "measured_speedup"} <= set(data["totals"])
    rows = {row["name"]: row for row in data["layers"]}
    assert {"name", "converted", "reason", "r_s", "r_c"} <= set(rows["conv"])
    assert rows["stem"]["converted"] is False and rows["stem"]["reason"]
    conv = rows["conv"]
    assert conv["converted"] and conv["out_hw"] == [8, 8]
    assert conv["r_s"] == pytest.approx(theoretical_speedup(16, (3, 3), 2, 3), abs=1e-4)
    # measured: 16 intrinsic maps of 16*9 MACs + 16 ghosts of 9 MACs, 8x8 each
    assert conv["macs_after"] == 16 * 64 * 144 + 16 * 64 * 9
    assert conv["macs_before"] / conv["macs_after"] == pytest.approx(conv["r_s"], rel=1e-3)
    t = data["totals"]
    assert t["macs_before"] == count_macs(model, torch.randn(1, 3, 16, 16)).total
    assert t["params_before"] == count_params(model) and t["params_after"] == count_params(ghost)
    assert t["theoretical_speedup"] == pytest.approx(t["measured_speedup"], rel=1e-3)


def test_report_rejects_a_wrong_input_size_clearly():
    model = Toy().eval()
    ghost = ghostify.convert(model)
    with pytest.raises(ghostify.GhostifyError, match="rejected an input of size"):
        build_report(model, ghost, (5, 16, 16))


def test_gpu_target_says_so():
    model = Toy().eval()
    report = build_report(model, ghostify.convert(model), (3, 16, 16), target="gpu")
    assert any("memory-bound" in w for w in report.to_dict()["warnings"])
