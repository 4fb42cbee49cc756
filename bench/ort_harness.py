"""An independent latency harness: plain onnxruntime + time.perf_counter, nothing from ghostify.

It exists to cross-check ``ghostify bench``: same question (how much faster is B than A on
onnxruntime's CPU execution provider), answered by the shortest code that can answer it, so a
bug in ghostify's timing code cannot flatter ghostify's results.

    python bench/ort_harness.py A.onnx B.onnx --threads 1 --runs 100 --warmup 10 [--json OUT]

Both sessions: CPUExecutionProvider, ORT_ENABLE_ALL, sequential, ``--threads`` intra-op threads.
Runs are interleaved A B A B ...; the speed-up is the median of the per-pair t_A / t_B.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time

import numpy as np
import onnxruntime as ort


def session(path: str, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])


def feed(sess: ort.InferenceSession, batch: int) -> dict[str, np.ndarray]:
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) else batch for d in inp.shape]
    return {inp.name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(("model name", "Hardware", "CPU part")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    sa, sb = session(args.a, args.threads), session(args.b, args.threads)
    fa, fb = feed(sa, args.batch), feed(sb, args.batch)
    for _ in range(args.warmup):
        sa.run(None, fa)
        sb.run(None, fb)
    ta, tb = [], []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        sa.run(None, fa)
        t1 = time.perf_counter()
        sb.run(None, fb)
        t2 = time.perf_counter()
        ta.append(t1 - t0)
        tb.append(t2 - t1)
    ta_ms, tb_ms = np.array(ta) * 1e3, np.array(tb) * 1e3
    ratio = ta_ms / tb_ms
    out = {
        "kind": "ort_harness",
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "cpu": cpu_model(),
        "onnxruntime_version": ort.__version__,
        "threads": args.threads, "batch": args.batch, "runs": args.runs, "warmup": args.warmup,
        "a": {"path": args.a, "p50_ms": float(np.median(ta_ms)), "p10_ms": float(np.percentile(ta_ms, 10)),
              "p90_ms": float(np.percentile(ta_ms, 90))},
        "b": {"path": args.b, "p50_ms": float(np.median(tb_ms)), "p10_ms": float(np.percentile(tb_ms, 10)),
              "p90_ms": float(np.percentile(tb_ms, 90))},
        "speedup": float(np.median(ratio)),
        "speedup_p10": float(np.percentile(ratio, 10)),
        "speedup_p90": float(np.percentile(ratio, 90)),
        "latency_ratio": float(np.median(tb_ms / ta_ms)),
    }
    print(f"{out['cpu']}, onnxruntime {ort.__version__}, {args.threads} thread(s), batch {args.batch}, "
          f"{args.runs} interleaved runs")
    print(f"A {args.a}: p50 {out['a']['p50_ms']:.2f} ms   B {args.b}: p50 {out['b']['p50_ms']:.2f} ms")
    print(f"speed-up B over A: median {out['speedup']:.3f}x (p10 {out['speedup_p10']:.3f}, "
          f"p90 {out['speedup_p90']:.3f})")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
            fh.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
