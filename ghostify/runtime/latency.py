"""Latency benchmarks: onnxruntime on CPU (and eager torch), two models interleaved.

Timing two models one after the other on a shared or thermally throttled machine measures the
machine as much as the models. ``bench_onnx`` therefore runs them interleaved (A B A B ...),
after discarded warm-up runs, and reports the per-run ratio: each ratio compares two runs a few
milliseconds apart, so slow drift (other jobs, clock changes) cancels. Figures are medians with
p10/p90, never means.

Ratio conventions (also in ``docs/deploy.md``):

* ``latency_ratio`` = median over runs of ``t_B / t_A`` (< 1: B is faster). ``ghostify check
  --max-latency-ratio`` gates on it.
* ``speedup`` = median over runs of ``t_A / t_B`` (> 1: B is faster), the figure quoted in
  tables ("1.8x faster").
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ghostify.errors import GhostifyError, InvalidValueError
from ghostify.runtime.cpu import cpu_info
from ghostify.runtime.session import onnx_session
from ghostify.utils import first_line

__all__ = ["percentiles", "bench_onnx", "time_onnx", "compare", "bench_torch", "profile_onnx", "TimedModel",
           "SCHEMA", "MAX_THREADS"]

SCHEMA = "ghostify.bench/1"

Progress = Callable[[int, int], None]  # (done, total)


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """p10, p50 (median), p90 and the number of values."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return {"p10": float("nan"), "p50": float("nan"), "p90": float("nan"), "n": 0}
    p10, p50, p90 = np.percentile(arr, [10, 50, 90])
    return {"p10": float(p10), "p50": float(p50), "p90": float(p90), "n": int(arr.size)}


def _feed(session: Any, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    feeds = {}
    rng = np.random.default_rng(seed)
    for inp in session.get_inputs():
        shape = []
        for k, dim in enumerate(inp.shape):
            if isinstance(dim, int) and dim > 0:
                if k == 0 and batch != dim:
                    raise GhostifyError(f"{inp.name}: the model has a fixed batch of {dim}; a batch of {batch} "
                                        "needs an export with a dynamic batch dimension", param="batch",
                                        hint="export it with dynamic_batch=True")
                shape.append(dim)
            elif k == 0:
                shape.append(batch)
            else:
                raise GhostifyError(f"input {inp.name!r} has a symbolic dimension {dim!r} other than the batch")
        if "float" not in inp.type:  # ghostify times image models: it feeds random pixels
            raise GhostifyError(f"input {inp.name!r} is a {inp.type}; ghostify bench feeds float images only")
        dtype = np.float16 if "float16" in inp.type else np.float32
        feeds[inp.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


@dataclass
class TimedModel:
    """Latencies of one model in milliseconds."""

    name: str
    times_ms: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        p = percentiles(self.times_ms)
        return {"name": self.name, "p10_ms": p["p10"], "p50_ms": p["p50"], "p90_ms": p["p90"],
                "mean_ms": statistics.fmean(self.times_ms) if self.times_ms else float("nan"), "runs": p["n"]}


def _interleave(calls: Sequence[Callable[[], Any]], names: Sequence[str], runs: int, warmup: int,
                progress: Progress | None, sync: Callable[[], None] | None = None) -> list[TimedModel]:
    for _ in range(warmup):  # discarded: first runs pay for allocation, caches, thread start-up
        for call in calls:
            call()
        if sync is not None:
            sync()
    timed = [TimedModel(n) for n in names]
    total = runs * len(calls)
    done = 0
    for r in range(runs):
        # alternate who goes first so neither model always runs right after the other
        order = range(len(calls)) if r % 2 == 0 else reversed(range(len(calls)))
        for i in order:
            if sync is not None:
                sync()
            t0 = time.perf_counter()
            calls[i]()
            if sync is not None:
                sync()
            timed[i].times_ms.append((time.perf_counter() - t0) * 1e3)
            done += 1
            if progress is not None:
                progress(done, total)
    return timed


def compare(timed: Sequence[TimedModel]) -> dict[str, Any]:
    """Summaries of A (and B), and the median, p10 and p90 of the per-run ratios of B to A."""
    out: dict[str, Any] = {"a": timed[0].summary()}
    if len(timed) > 1:
        a, b = np.asarray(timed[0].times_ms), np.asarray(timed[1].times_ms)
        lat = percentiles(b / a)
        spd = percentiles(a / b)
        out["b"] = timed[1].summary()
        out["latency_ratio"] = lat["p50"]
        out["latency_ratio_p10"] = lat["p10"]
        out["latency_ratio_p90"] = lat["p90"]
        out["speedup"] = spd["p50"]
        out["speedup_p10"] = spd["p10"]
        out["speedup_p90"] = spd["p90"]
    return out


MAX_THREADS = 1024


def _check_counts(runs: int, warmup: int, threads: int | None, batch: int) -> None:
    if runs < 1:
        raise InvalidValueError("runs", f"must be >= 1, got {runs}")
    if warmup < 0:
        raise InvalidValueError("warmup", f"must be >= 0, got {warmup}")
    if threads is not None and not 1 <= threads <= MAX_THREADS:  # thousands of pool threads hang the machine
        raise InvalidValueError("threads", f"must be between 1 and {MAX_THREADS}, got {threads}")
    if batch < 1:
        raise InvalidValueError("batch", f"must be >= 1, got {batch}")


def time_onnx(
    paths: Sequence[str | os.PathLike],
    *,
    threads: int | None = 1,
    batch: int = 1,
    runs: int = 50,
    warmup: int = 10,
    progress: Progress | None = None,
) -> list[TimedModel]:
    """Latencies of one or more ONNX models, interleaved run by run (onnxruntime CPU, ORT_ENABLE_ALL)."""
    _check_counts(runs, warmup, threads, batch)
    paths = [Path(p) for p in paths]
    for p in paths:
        if not p.is_file():
            raise GhostifyError(f"{p}: no such ONNX file")
    sessions = []
    for p in paths:
        try:
            sessions.append(onnx_session(p, threads=threads))
        except Exception as exc:  # onnxruntime raises its own exception types on bad files
            raise GhostifyError(f"{p}: onnxruntime cannot load it ({first_line(exc, 200)})") from exc
    feeds = [_feed(s, batch) for s in sessions]
    calls = [lambda s=s, f=f: s.run(None, f) for s, f in zip(sessions, feeds, strict=True)]
    return _interleave(calls, [str(p) for p in paths], runs, warmup, progress)


def bench_onnx(
    a: str | os.PathLike,
    b: str | os.PathLike | None = None,
    *,
    threads: int | None = 1,
    batch: int = 1,
    runs: int = 50,
    warmup: int = 10,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Time one ONNX model, or two interleaved, with onnxruntime's CPU execution provider.

    Sessions use ORT_ENABLE_ALL and sequential execution with ``threads`` intra-op threads
    (None: onnxruntime's default). Returns a JSON-ready dict (``"kind": "bench"``); see the
    module docstring for ``latency_ratio`` and ``speedup``.
    """
    import onnxruntime as ort

    paths = [a] + ([b] if b is not None else [])
    timed = time_onnx(paths, threads=threads, batch=batch, runs=runs, warmup=warmup, progress=progress)
    result: dict[str, Any] = {
        "kind": "bench", "schema": SCHEMA, "engine": "onnxruntime", "device": "cpu",
        "provider": "CPUExecutionProvider", "graph_optimization": "ORT_ENABLE_ALL",
        "onnxruntime_version": ort.__version__, "threads": threads, "batch": batch, "runs": runs,
        "warmup": warmup, "interleaved": len(paths) > 1, "cpu": cpu_info(),
    }
    result.update(compare(timed))
    return result


def bench_torch(
    model_a: Any,
    model_b: Any | None,
    input_size: Sequence[int],
    *,
    batch: int = 1,
    runs: int = 30,
    warmup: int = 5,
    device: str = "cpu",
    threads: int | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Eager torch (eval, no grad) timing of one or two models, interleaved like ``bench_onnx``."""
    import torch

    _check_counts(runs, warmup, threads, batch)
    if device not in ("cpu", "cuda"):
        raise InvalidValueError("device", f"must be cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise GhostifyError("device cuda: no CUDA device is available here", param="device")
    old_threads = torch.get_num_threads()
    if threads is not None and device == "cpu":
        torch.set_num_threads(threads)
    try:
        models = [m.eval().to(device) for m in ([model_a] + ([model_b] if model_b is not None else []))]
        x = torch.randn((batch, *[int(v) for v in input_size]), generator=torch.Generator().manual_seed(0)).to(device)
        sync = torch.cuda.synchronize if device == "cuda" else None

        def runner(m: Any) -> Callable[[], Any]:
            def call() -> Any:
                with torch.inference_mode():
                    return m(x)
            return call

        timed = _interleave([runner(m) for m in models], [type(m).__name__ for m in models], runs, warmup,
                            progress, sync)
    finally:
        torch.set_num_threads(old_threads)
    result: dict[str, Any] = {"engine": "torch-eager", "device": device, "torch_version": torch.__version__,
                              "threads": threads if device == "cpu" else None, "batch": batch, "runs": runs,
                              "warmup": warmup}
    if device == "cuda":
        result["gpu"] = torch.cuda.get_device_name()
    result.update(compare(timed))
    return result


def profile_onnx(path: str | os.PathLike, *, threads: int | None = 1, batch: int = 1, runs: int = 20,
                 warmup: int = 5) -> dict[str, Any]:
    """onnxruntime's own profile: kernel time per op type (after ORT_ENABLE_ALL's fusions)."""
    import json
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        sess = onnx_session(path, threads=threads, profile_prefix=str(Path(tmp) / "ort"))
        feeds = _feed(sess, batch)
        for _ in range(warmup):
            sess.run(None, feeds)
        # warm-up events are in the file too: only count the last `runs` runs of each node
        for _ in range(runs):
            sess.run(None, feeds)
        events = json.loads(Path(sess.end_profiling()).read_text())
    per_node: dict[str, list[float]] = {}
    op_of: dict[str, str] = {}
    for ev in events:
        if ev.get("cat") == "Node" and str(ev.get("name", "")).endswith("_kernel_time"):
            per_node.setdefault(ev["name"], []).append(float(ev["dur"]))
            op_of[ev["name"]] = ev.get("args", {}).get("op_name", "?")
    by_op: dict[str, float] = {}
    count: dict[str, int] = {}
    for name, durs in per_node.items():
        op = op_of[name]
        by_op[op] = by_op.get(op, 0.0) + sum(durs[-runs:]) / min(runs, len(durs)) / 1e3
        count[op] = count.get(op, 0) + 1
    total = sum(by_op.values())
    ops = [{"op": op, "ms": round(ms, 3), "share": round(ms / total, 4) if total else 0.0, "nodes": count[op]}
           for op, ms in sorted(by_op.items(), key=lambda kv: -kv[1])]
    return {"path": str(path), "threads": threads, "batch": batch, "runs": runs, "kernel_ms": round(total, 3),
            "ops": ops}
