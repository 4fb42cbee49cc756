"""Issue 12's policy bars: the latency-aware policy on this CPU, against Eq. 4's plain policy.

    python bench/latency_policy.py [--runs 100] [--only mobilenet_v2,resnet50]

* MobileNetV2: the original, plain s=2 and ``--latency-aware`` s=2, exported in deployment form
  and timed interleaved in one onnxruntime run (1 thread, batch 1): the latency-aware model must
  measure >= 1.0x and at least the plain s=2 result.
* ResNet-50 with ``target_speedup=2.0``: the per-layer table is built with an empty cache (its
  seconds are the build time), then the conversion runs again and must read every shape from the
  cache; the chosen model is timed interleaved against the original and the plain s=2 model, and
  the prediction is compared with that measurement.

Writes bench/results/latency_policy.json. Absolute milliseconds on a shared machine are noise;
the ratios are measured side by side.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torchvision

import ghostify
from ghostify.export import export_onnx
from ghostify.policy import GhostConfig
from ghostify.runtime.cpu import cpu_info
from ghostify.runtime.latency import TimedModel, compare, percentiles, time_onnx

ROOT = Path(__file__).resolve().parents[1]
SIZE = (3, 224, 224)


def _ratio(a: TimedModel, b: TimedModel) -> dict[str, float]:
    """Per-run speed-up of b over a (same run, interleaved): median and p10-p90."""
    r = compare([a, b])
    return {k: round(r[k], 3) for k in ("speedup", "speedup_p10", "speedup_p90")}


def _time(models: dict[str, torch.nn.Module], runs: int, tmp: Path) -> tuple[dict[str, Any], dict[str, TimedModel]]:
    """Deployment forms of every model, interleaved: medians and per-run speed-ups over the first; the timings."""
    paths = []
    for name, model in models.items():
        path = tmp / f"{name}.onnx"
        export_onnx(model, path, SIZE, check=False)
        paths.append(path)
    timed = dict(zip(models, time_onnx(paths, threads=1, runs=runs, warmup=5), strict=True))
    base = next(iter(timed.values()))
    out = {name: {"p50_ms": round(percentiles(t.times_ms)["p50"], 3), **_ratio(base, t)} for name, t in timed.items()}
    return out, timed


def _summary(plan: Any) -> dict[str, Any]:
    info = {k: v for k, v in plan.latency.items() if k not in ("layers", "machine", "cache")}
    kept = [(x.name, x.reason) for x in plan.layers if not x.converted and x.latency]
    chosen = {}
    for x in plan.converted:
        chosen[x.s] = chosen.get(x.s, 0) + 1
    return {**info, "converted": len(plan.converted), "s_histogram": chosen, "kept_by_measurement": kept}


def mobilenet(runs: int, tmp: Path) -> dict[str, Any]:
    original = torchvision.models.mobilenet_v2().eval()
    plain = ghostify.convert(original, s=2, d=3)
    t0 = time.perf_counter()
    aware = ghostify.convert(original, config=GhostConfig(s=2, d=3, latency="measure", cache_dir=str(tmp / "cache")),
                             input_size=SIZE)
    seconds = time.perf_counter() - t0
    timed, times = _time({"original": original, "plain_s2": plain, "latency_aware_s2": aware}, runs, tmp)
    la = timed["latency_aware_s2"]["speedup"]
    # where the whole-model check kept Eq. 4's model, both rows are one model: their gap is the run's noise
    same = _choice(aware) == _choice(plain)
    return {"timed": timed, "policy": _summary(aware.ghostify_plan), "convert_seconds": round(seconds, 1),
            "latency_aware_over_plain_s2": _ratio(times["plain_s2"], times["latency_aware_s2"]),
            "same_model_as_plain_s2": same, "bar_never_slower": la >= 1.0,
            "bar_at_least_plain_s2": same or la >= timed["plain_s2"]["speedup"]}


def _choice(model: Any) -> list[tuple[str, bool, int]]:
    return [(x.name, x.converted, x.s) for x in model.ghostify_plan.layers]


def resnet50(runs: int, tmp: Path, target: float) -> dict[str, Any]:
    original = torchvision.models.resnet50().eval()
    config = GhostConfig(target_speedup=target, cache_dir=str(tmp / "cache"))
    t0 = time.perf_counter()
    first = ghostify.convert(original, config=config, input_size=SIZE)
    first_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = ghostify.convert(original, config=config, input_size=SIZE)
    again_seconds = time.perf_counter() - t0
    p1, p2 = first.ghostify_plan.latency, again.ghostify_plan.latency
    plain = ghostify.convert(original, s=2, d=3)
    timed, _ = _time({"original": original, "plain_s2": plain, "budget": again}, runs, tmp)
    predicted = p2["predicted_speedup"]
    measured = timed["budget"]["speedup"]
    return {"target_speedup": target, "timed": timed, "policy": _summary(again.ghostify_plan),
            "table_build_seconds": p1["table_seconds"], "first_convert_seconds": round(first_seconds, 1),
            "second_convert_seconds": round(again_seconds, 1), "second_run_table_seconds": p2["table_seconds"],
            "second_run_shapes_cached": p2["shapes_cached"], "second_run_shapes_measured": p2["shapes_measured"],
            "same_choice_both_runs": _choice(first) == _choice(again),
            "predicted_speedup": predicted, "measured_speedup": measured,
            "prediction_error": round(abs(predicted - measured) / measured, 3),
            "bar_measured_ge_1_9": measured >= 1.9,
            "bar_prediction_within_10pct": abs(predicted - measured) <= 0.1 * measured,
            "bar_table_le_300s": p1["table_seconds"] <= 300, "bar_cache_reused": p2["shapes_measured"] == 0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--only", default="mobilenet_v2,resnet50")
    ap.add_argument("--target", type=float, default=2.0)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "latency_policy.json")
    args = ap.parse_args()
    torch.set_num_threads(1)  # the exports and the policy's own runs stay off the timed thread's core
    result: dict[str, Any] = json.loads(args.out.read_text()) if args.out.exists() else {}
    command = shlex.join(["python", *sys.argv]).replace(str(ROOT) + "/", "")
    result.update({"bench": "latency_policy", "command": command, "cpu": cpu_info(),
                   "onnxruntime": __import__("onnxruntime").__version__, "threads": 1, "runs": args.runs})
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only.split(","):
            print(f"== {name}", flush=True)
            result[name] = mobilenet(args.runs, Path(tmp)) if name == "mobilenet_v2" else \
                resnet50(args.runs, Path(tmp), args.target)
            result[name]["command"] = command  # pieces run apart keep their own
            print(json.dumps(result[name], indent=1, default=str), flush=True)
            args.out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
