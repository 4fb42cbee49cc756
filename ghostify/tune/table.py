"""Time one convolution against its Ghost modules, alone, in the deployment form, on onnxruntime.

Each candidate layer becomes a few one-layer ONNX models at the layer's real input shape: the
convolution as deployed (BatchNorm folded, activation fused by onnxruntime) and the fused Ghost
module (:meth:`ghostify.layers.ghost.GhostModule.fuse`) at each s. They run interleaved, run by
run, at the model's thread count, so a ratio between them is measured side by side. Layers with
the same shape share one measurement, and the cache keeps it for the next run on this machine.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ghostify.export.deploy import DeployConfig
from ghostify.export.onnx import module_to_onnx
from ghostify.layers.ghost import GhostModule, intrinsic_channels
from ghostify.layers.surgery import norm_class
from ghostify.runtime.latency import percentiles
from ghostify.runtime.session import onnx_session
from ghostify.tune.cache import LatencyCache

__all__ = ["LayerCase", "LatencyTable", "measure_table", "CONV"]

CONV = "conv"  # the variant name of the layer left as it is
TARGET_SECONDS = 0.6  # timed seconds per layer, all variants together
MIN_RUNS, MAX_RUNS = 15, 400


@dataclass
class LayerCase:
    """One candidate convolution: its module, the input it sees, what follows it, the s to try."""

    name: str
    conv: nn.Module
    input_shape: tuple[int, ...]
    d: int
    act: nn.Module | None = None
    s_choices: tuple[int, ...] = (2, 3, 4)

    def valid_s(self) -> list[int]:
        n, groups = self.conv.out_channels, self.conv.groups
        return [s for s in self.s_choices if intrinsic_channels(n, s, groups) < n]

    def key(self) -> str:
        c = self.conv
        act = type(self.act).__name__ if self.act is not None else "none"
        shape = "x".join(str(v) for v in self.input_shape)
        return (f"{type(c).__name__} c={c.in_channels} n={c.out_channels} k={tuple(c.kernel_size)} "
                f"stride={tuple(c.stride)} pad={c.padding} dil={tuple(c.dilation)} g={c.groups} in={shape} "
                f"act={act} d={self.d} s={','.join(map(str, self.valid_s()))}")


def _plain(case: LayerCase) -> nn.Module:
    """The convolution as deployed: BatchNorm folded into a bias, then its activation."""
    conv = copy.deepcopy(case.conv)
    if conv.bias is None:
        conv.bias = nn.Parameter(torch.zeros(conv.out_channels, dtype=conv.weight.dtype))
    return nn.Sequential(conv, copy.deepcopy(case.act) if case.act is not None else nn.Identity())


def _ghost(case: LayerCase, s: int, deploy: DeployConfig) -> nn.Module:
    norm = norm_class(len(case.conv.kernel_size))(case.conv.out_channels)
    ghost = GhostModule.from_conv(case.conv, s=s, d=case.d, norm=norm, act=case.act)
    return ghost.eval().fuse(deploy.fuse_options)


def variants(case: LayerCase, deploy: DeployConfig | None = None) -> dict[str, nn.Module]:
    """``{"conv": the layer, "s2": its Ghost module at s=2, ...}`` in deployment form, eval mode."""
    deploy = deploy or DeployConfig()
    out = {CONV: _plain(case).eval()}
    out.update({f"s{s}": _ghost(case, s, deploy) for s in case.valid_s()})
    return out


def _time_variants(models: dict[str, nn.Module], input_shape: Sequence[int], threads: int) -> dict[str, float]:
    """Median milliseconds of each one-layer model, interleaved run by run."""
    x = torch.randn(1, *input_shape[1:])
    sessions = {name: onnx_session(module_to_onnx(m, x), threads=threads) for name, m in models.items()}
    feed = {next(iter(sessions.values())).get_inputs()[0].name: x.numpy()}
    for s in sessions.values():  # warm-up: allocation, caches, thread start-up
        s.run(None, feed)
    t0 = time.perf_counter()
    sessions[CONV].run(None, feed)
    once = max(time.perf_counter() - t0, 1e-5)
    runs = int(min(MAX_RUNS, max(MIN_RUNS, TARGET_SECONDS / (once * len(sessions)))))
    times: dict[str, list[float]] = {name: [] for name in sessions}
    names = list(sessions)
    for r in range(runs):
        for name in names if r % 2 == 0 else reversed(names):
            t0 = time.perf_counter()
            sessions[name].run(None, feed)
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: percentiles(v)["p50"] for name, v in times.items()}


@dataclass
class LatencyTable:
    """Median ms of every candidate layer's variants, and where they came from."""

    threads: int
    machine: str
    timings: dict[str, dict[str, float]] = field(default_factory=dict)  # layer name -> variant -> ms
    measured: int = 0  # distinct shapes timed in this run
    cached: int = 0  # distinct shapes read from the cache
    seconds: float = 0.0

    def speedup(self, name: str, s: int) -> float | None:
        row = self.timings.get(name, {})
        ghost = row.get(f"s{s}")
        return None if ghost is None or not ghost else row[CONV] / ghost


def measure_table(cases: Sequence[LayerCase], threads: int, cache: LatencyCache,
                  progress: Callable[[int, int, str], None] | None = None) -> LatencyTable:
    """Time every case (each distinct shape once; cached ones are read, not timed)."""
    start = time.perf_counter()
    table = LatencyTable(threads=threads, machine=cache.machine)
    by_key: dict[str, list[LayerCase]] = {}
    for case in cases:
        by_key.setdefault(case.key(), []).append(case)
    for i, (key, same) in enumerate(by_key.items()):
        row = cache.get(key)
        if row is None:
            with torch.no_grad():
                row = _time_variants(variants(same[0]), same[0].input_shape, threads)
            cache.put(key, row)
            table.measured += 1
        else:
            table.cached += 1
        for case in same:
            table.timings[case.name] = dict(row)
        if progress is not None:
            progress(i + 1, len(by_key), f"timing {same[0].name} ({len(same)} layer(s) of this shape)")
    if table.measured:
        cache.save()
    table.seconds = round(time.perf_counter() - start, 2)
    return table
