"""Choose s per layer to meet a budget at the least predicted accuracy cost.

Each candidate layer has options: keep it (s=1), or a Ghost module at each s it allows, each with
a measured time, its MACs and a sensitivity. A greedy walk starts from "keep everything" and takes,
one step at a time, the upgrade with the most budget gained per unit of sensitivity added, until
the prediction reaches the target: the classic greedy for a multiple-choice knapsack, within a
step of its optimum when steps are small against the budget, as one layer is against a network.

Sensitivity is a data-free proxy (:func:`spectral_sensitivity`): the share of a layer's filter
energy outside its best rank-m approximation, m = n/s intrinsic filters. No set of m filters, even
mixed freely, reproduces more of the bank than that rank-m approximation, so the proxy grows with
s as the true reconstruction error does, costs one SVD per layer and needs no data. It ranks
layers; it is not an accuracy prediction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ghostify.layers.ghost import intrinsic_channels

__all__ = ["LayerOption", "LayerChoices", "spectral_sensitivity", "choose", "EPS"]

EPS = 1e-9


@dataclass
class LayerOption:
    """One way to build a layer: s=1 keeps the convolution."""

    s: int
    ms: float  # measured median latency of the layer in this form
    macs: float
    sensitivity: float


@dataclass
class LayerChoices:
    name: str
    options: list[LayerOption]  # options[0] is "keep" (s=1)
    chosen: int = 0
    history: list[int] = field(default_factory=list)

    @property
    def current(self) -> LayerOption:
        return self.options[self.chosen]


def spectral_sensitivity(conv: nn.Module, s_values: Sequence[int]) -> dict[int, float]:
    """``{s: energy share outside the best rank-m approximation of the filters}``, per group."""
    w = conv.weight.detach().float()
    groups, n = conv.groups, conv.out_channels
    per_group = w.reshape(groups, n // groups, -1)
    sv = torch.linalg.svdvals(per_group)  # (groups, min(n/g, c/g K))
    energy = (sv ** 2).sum().item() + EPS
    out = {}
    for s in s_values:
        m_group = intrinsic_channels(n, s, groups) // groups
        out[s] = float((sv[:, m_group:] ** 2).sum().item() / energy)
    return out


def _best_step(layers: list[LayerChoices], use_time: bool) -> tuple[LayerChoices, int] | None:
    best: tuple[float, LayerChoices, int] | None = None
    for layer in layers:
        cur = layer.current
        for j in range(layer.chosen + 1, len(layer.options)):
            opt = layer.options[j]
            gain = (cur.ms - opt.ms) if use_time else (cur.macs - opt.macs)
            if gain <= 0:
                continue
            score = gain / (max(opt.sensitivity - cur.sensitivity, 0.0) + EPS)
            if best is None or score > best[0]:
                best = (score, layer, j)
    return None if best is None else (best[1], best[2])


def predicted(layers: Sequence[LayerChoices], total: float, use_time: bool) -> float:
    """The whole model's predicted ratio (time or MACs) with the current choices."""
    saved = sum((x.options[0].ms - x.current.ms) if use_time else (x.options[0].macs - x.current.macs)
                for x in layers)
    return total / max(total - saved, EPS)


def choose(layers: list[LayerChoices], total: float, target: float, use_time: bool = True) -> float:
    """Upgrade layers greedily until ``total / new total >= target``; returns the prediction reached.

    ``total`` is the whole model's latency (ms) or MACs; a layer's saving is its keep option's
    figure minus its chosen option's. Stops early when nothing more helps (the target is out of
    reach); the caller reports that.
    """
    if not math.isfinite(target) or target <= 0:
        raise ValueError(f"target must be a positive number, got {target}")
    while predicted(layers, total, use_time) < target:
        step = _best_step(layers, use_time)
        if step is None:
            break
        layer, j = step
        layer.history.append(layer.chosen)
        layer.chosen = j
    return predicted(layers, total, use_time)
