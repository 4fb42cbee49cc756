"""The latency-aware policy: measure the candidates, decide per layer, predict the whole model.

:func:`latency_policy` runs the rewrite once as a dry run to learn the candidates (the layers the
policy would convert) and what follows each one, times them (:mod:`ghostify.tune.table`), and
returns a copy of the config whose per-name settings hold the decision: a layer converts only
where its Ghost module measured faster, at the config's s, or at the s the budget chose
(:mod:`ghostify.tune.budget`). Every layer it keeps gets the measurement as its reason.
"""

from __future__ import annotations

import copy
import glob
import hashlib
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ghostify.export.onnx import export_onnx
from ghostify.forward import example_input
from ghostify.fx.rewrite import rewrite
from ghostify.layers.ghost import GhostModule
from ghostify.policy import GhostConfig
from ghostify.policy.equations import theoretical_speedup
from ghostify.report.counting import count_macs, forward_with_hooks
from ghostify.runtime.latency import compare, time_onnx
from ghostify.tune.budget import LayerChoices, LayerOption, choose, predicted, spectral_sensitivity
from ghostify.tune.cache import LatencyCache, machine_key
from ghostify.tune.table import CONV, LatencyTable, LayerCase, measure_table

__all__ = ["latency_policy", "measure_speedup", "recalibrated_alpha", "remember_alpha"]

Progress = Callable[[int, int, str], None]
MODEL_RUNS = 30
ALPHA_RANGE = (0.25, 4.0)  # a calibration outside this says the anchor run was noise: clamp it


def _input_shapes(model: nn.Module, names: Sequence[str], x: Any) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name: str) -> Callable[..., None]:
        def hook(mod: nn.Module, inp: tuple, out: Any) -> None:
            shapes.setdefault(name, tuple(inp[0].shape))
        return hook

    forward_with_hooks(model, x, {name: record(name) for name in names})
    return shapes


def _act(ghost: GhostModule) -> nn.Module | None:
    act = ghost.primary_conv[2]
    return None if isinstance(act, nn.Identity) else act


def _cases(model: nn.Module, config: GhostConfig, input_size: Sequence[int]) -> tuple[list[LayerCase], nn.Module]:
    """The layers the policy would convert, each with its input shape and following activation
    (a budget tries every s in ``s_choices``, otherwise each layer's own s), and the model Eq. 4's
    policy alone makes (the anchor the prediction is calibrated on)."""
    gm, plan = rewrite(model, config.without_latency())
    ghosts = dict(gm.named_modules())
    modules = dict(model.named_modules())
    names = [layer.name for layer in plan.converted]
    with torch.no_grad():
        shapes = _input_shapes(model, names, example_input(model, input_size))
    cases = []
    for layer in plan.converted:
        if layer.name not in shapes:  # never called on this input: nothing to time
            continue
        s_choices = config.s_choices if config.budgeted else (layer.s,)
        cases.append(LayerCase(layer.name, modules[layer.name], shapes[layer.name], layer.d,
                               _act(ghosts[layer.name]), tuple(s_choices), layer.s))
    return cases, gm


def measure_side_by_side(original: nn.Module, converted: dict[str, nn.Module], input_size: Sequence[int],
                         threads: int = 1, runs: int = MODEL_RUNS) -> dict[str, dict[str, Any]]:
    """The original and each converted model (deployment forms) on onnxruntime, interleaved in one run:
    per converted model, both medians and the median per-run speed-up over the original. Models
    compared with each other must share a run: a run timed another time, under other load, does not
    compare."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = [Path(tmp) / f"{i}.onnx" for i in range(len(converted) + 1)]
        for model, path in zip([original, *converted.values()], paths, strict=True):
            export_onnx(model, path, input_size, check=False)
        timed = time_onnx(paths, threads=threads, runs=runs, warmup=3)
    out = {}
    for name, t in zip(converted, timed[1:], strict=True):
        result = compare([timed[0], t])
        out[name] = {"original_ms": result["a"]["p50_ms"], "ghost_ms": result["b"]["p50_ms"],
                     "speedup": result["speedup"], "threads": threads, "runs": runs}
    return out


def measure_speedup(original: nn.Module, converted: nn.Module, input_size: Sequence[int], threads: int = 1,
                    runs: int = MODEL_RUNS) -> dict[str, Any]:
    """Both deployment forms on onnxruntime, interleaved: medians and the median per-run speed-up."""
    return measure_side_by_side(original, {"ghost": converted}, input_size, threads, runs)["ghost"]


def _model_key(model: nn.Module, eq4: nn.Module, input_size: Sequence[int]) -> str:
    """The cache key of a whole-model timing: the modules, Eq. 4's traced graph and the input size."""
    code = getattr(eq4, "code", "")
    digest = hashlib.sha256(f"{model}\n{eq4}\n{code}\n{tuple(input_size)}".encode()).hexdigest()[:24]
    return f"model {digest}"


def _anchor(model: nn.Module, eq4: nn.Module, cases: Sequence[LayerCase], table: LatencyTable,
            input_size: Sequence[int], threads: int, cache: LatencyCache) -> dict[str, Any]:
    """The original and Eq. 4's model timed whole, interleaved; and ``alpha``, how much more a layer
    saves in the graph than alone (one layer timed alone runs with its weights and input in cache,
    and without its neighbours' layout changes), which scales every predicted saving.

    The timing is cached with the layers' (per model structure and input size), so the same
    conversion on the same machine calibrates, and therefore decides, the same way every time.
    """
    key = _model_key(model, eq4, input_size)
    measured = cache.get(key)
    cached = measured is not None
    if measured is None:
        measured = measure_speedup(model, eq4, input_size, threads)
        cache.put(key, measured)
        cache.save()
    alone = sum(table.timings[c.name][CONV] - table.timings[c.name].get(f"s{c.s_policy}", table.timings[c.name][CONV])
                for c in cases)
    in_graph = measured["original_ms"] - measured["ghost_ms"]
    alpha = min(max(in_graph / alone, ALPHA_RANGE[0]), ALPHA_RANGE[1]) if alone > 0 and in_graph > 0 else 1.0
    return {**measured, "alpha": round(alpha, 4), "saved_alone_ms": round(alone, 4), "cached": cached, "key": key}


def _choices(case: LayerCase, table: LatencyTable, macs: dict[str, float], min_speedup: float) -> LayerChoices:
    row = table.timings[case.name]
    sens = spectral_sensitivity(case.conv, case.valid_s())
    keep_macs = macs[case.name]
    options = [LayerOption(1, row[CONV], keep_macs, 0.0)]
    for s in case.valid_s():
        if (table.speedup(case.name, s) or 0.0) <= min_speedup:  # never a layer that measures slower
            continue
        options.append(LayerOption(s, row[f"s{s}"], keep_macs * _mac_ratio(case, s), sens[s]))
    options.sort(key=lambda o: o.s)
    return LayerChoices(case.name, options)


def _mac_ratio(case: LayerCase, s: int) -> float:
    c = case.conv
    return 1.0 / theoretical_speedup(c.in_channels, c.kernel_size, s, case.d, c.groups)


def _conv_macs(model: nn.Module, cases: Sequence[LayerCase], x: Any) -> dict[str, float]:
    """Each candidate's MACs from its output size (n c/g K per output position)."""
    out: dict[str, float] = {}

    def record(case: LayerCase) -> Callable[..., None]:
        def hook(mod: nn.Module, inp: tuple, y: torch.Tensor) -> None:
            per_position = mod.in_channels // mod.groups * int(torch.tensor(mod.kernel_size).prod())
            out.setdefault(case.name, float(y[0].numel() * per_position))
        return hook

    forward_with_hooks(model, x, {case.name: record(case) for case in cases})
    return out


def _decide_measured(config: GhostConfig, cases: Sequence[LayerCase], table: LatencyTable) -> dict[str, int]:
    """No budget: each layer at its own s, kept where it does not measure faster."""
    return {case.name: case.s_choices[0] for case in cases
            if (table.speedup(case.name, case.s_choices[0]) or 0.0) > config.min_layer_speedup}


def _decide_budget(config: GhostConfig, model: nn.Module, cases: Sequence[LayerCase], table: LatencyTable,
                   input_size: Sequence[int], summary: dict[str, Any]) -> dict[str, int]:
    with torch.no_grad():
        x = example_input(model, input_size)
        macs = _conv_macs(model, cases, x)
    layers = [_choices(case, table, macs, config.min_layer_speedup) for case in cases]
    if config.target_speedup is not None:
        total = summary["model_ms"] / summary["anchor"]["alpha"]  # T / (T - alpha saved), as choose() counts
        reached = choose(layers, total, config.target_speedup, use_time=True)
        summary["target"] = {"speedup": config.target_speedup, "predicted": round(reached, 3)}
    else:
        total = float(count_macs(model, x).total)
        reached = choose(layers, total, config.target_macs, use_time=False)
        summary["target"] = {"macs": config.target_macs, "predicted": round(reached, 3)}
    summary["target"]["met"] = reached >= summary["target"].get("speedup", summary["target"].get("macs"))
    if "model_ms" in summary:
        total = summary["model_ms"] / summary["anchor"]["alpha"]
        summary["predicted_speedup"] = round(predicted(layers, total, use_time=True), 3)
    return {layer.name: layer.current.s for layer in layers if layer.current.s > 1}


def _reason(case: LayerCase, table: LatencyTable, min_speedup: float) -> str:
    """Why a measured layer is kept: slower on this CPU, or (a budget) not needed for the target."""
    valid = case.valid_s()
    if not valid:
        return f"n={case.conv.out_channels} too small for s in {list(case.s_choices)}: no maps to save"
    best = max(valid, key=lambda s: table.speedup(case.name, s) or 0.0)
    r = table.speedup(case.name, best) or 0.0
    at = f" at s={best}" if len(valid) > 1 else ""
    measured = f"measured {r:.2f}x{at} on this CPU (onnxruntime, {table.threads} thread(s))"
    return measured if r <= min_speedup else f"not needed for the target ({measured})"


def recalibrated_alpha(summary: dict[str, Any], measured: float) -> float | None:
    """The ``alpha`` under which the chosen model's prediction equals its measured speed-up ``measured``
    (None when the prediction was not above the measurement). With ``p = T / (T - alpha S)`` for the
    chosen layers' saving alone ``S``: ``alpha' = alpha (1 - 1/measured) / (1 - 1/p)``."""
    p, alpha = summary.get("predicted_speedup"), summary["anchor"]["alpha"]
    if p is None or p <= measured or p <= 1.0 or measured <= 1.0:
        return None
    return min(max(alpha * (1 - 1 / measured) / (1 - 1 / p), ALPHA_RANGE[0]), ALPHA_RANGE[1])


def _target_key(config: GhostConfig, summary: dict[str, Any]) -> str:
    return f"{summary['anchor']['key']} target {config.target_speedup:g}"


def remember_alpha(config: GhostConfig, summary: dict[str, Any], alpha: float) -> None:
    """Keep the calibration a budget's second try met its target with: the next conversion of this
    model to this target starts from it, so it makes that choice at once, and the same one."""
    cache = LatencyCache(machine_key(config.threads), config.cache_dir and Path(config.cache_dir))
    cache.put(_target_key(config, summary), {"alpha": alpha})
    cache.save()


def latency_policy(model: nn.Module, config: GhostConfig, input_size: Sequence[int],
                   progress: Progress | None = None, alpha: float | None = None) -> tuple[GhostConfig, dict[str, Any]]:
    """A copy of ``config`` decided by measurement, and the summary of what was measured.

    ``alpha``: a calibration to use instead of the anchor's (a budget's second try, calibrated on
    the model its first try chose: :func:`recalibrated_alpha`).
    """
    cases, eq4 = _cases(model, config, input_size)
    cache = LatencyCache(machine_key(config.threads), config.cache_dir and Path(config.cache_dir))
    table = measure_table(cases, config.threads, cache, progress)
    summary: dict[str, Any] = {"threads": table.threads, "machine": table.machine, "cache": str(cache.path),
                               "shapes_measured": table.measured, "shapes_cached": table.cached,
                               "table_seconds": table.seconds}
    budgeted = config.budgeted
    if config.target_speedup is not None or not budgeted:
        summary["anchor"] = _anchor(model, eq4, cases, table, input_size, config.threads, cache)
        summary["model_ms"] = round(summary["anchor"]["original_ms"], 4)
        explicit = alpha is not None
        learnt = cache.get(_target_key(config, summary)) if config.target_speedup is not None else None
        if not explicit and learnt is not None:  # an earlier conversion to this target measured short
            alpha = learnt["alpha"]
        if alpha is not None:
            summary["anchor"].update(alpha=round(alpha, 4), recalibrated=True if explicit else "cached")
    chosen = (_decide_budget(config, model, cases, table, input_size, summary) if budgeted
              else _decide_measured(config, cases, table))
    decided = config.without_latency()
    for case in cases:
        if case.name in chosen:
            decided.overrides[glob.escape(case.name)] = {"s": chosen[case.name]}
        else:
            decided.kept[case.name] = _reason(case, table, config.min_layer_speedup)
    summary["layers"] = {case.name: dict(table.timings[case.name]) for case in cases}
    if not budgeted:
        saved = summary["anchor"]["alpha"] * sum(table.timings[n][CONV] - table.timings[n][f"s{s}"]
                                                 for n, s in chosen.items())
        summary["predicted_speedup"] = round(summary["model_ms"] / max(summary["model_ms"] - saved, 1e-9), 3)
    return copy.deepcopy(decided), summary
