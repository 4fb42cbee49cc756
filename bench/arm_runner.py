"""Run ONNX models on onnxruntime's CPU execution provider and save their outputs: torch-free.

``bench/arm_parity.py`` copies this file into the arm64 root and runs it there, under qemu user
emulation, with nothing but numpy and onnxruntime installed; it also imports it on x86 so both
architectures run the models through the very same code.

    python arm_runner.py --input input.npy --out-dir OUT --json report.json A.onnx [B.onnx ...]

For each model: one session (CPUExecutionProvider, ORT_ENABLE_ALL, sequential), ``--warmup``
untimed runs, then ``--runs`` timed runs of the same input; the first output is saved as
``OUT/<model stem>.npy``. The report holds the machine, the onnxruntime version and the wall time
of each step.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort


def session(path: str | Path, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def run_model(path: str | Path, x: np.ndarray, runs: int, threads: int,
              warmup: int = 1) -> tuple[np.ndarray, dict[str, Any]]:
    """The first output of the model on ``x`` and the wall times (s) of building and running it."""
    t0 = time.perf_counter()
    sess = session(path, threads)
    session_s = time.perf_counter() - t0
    feed = {sess.get_inputs()[0].name: x}
    for _ in range(warmup):  # the first run allocates and packs weights: not a typical run
        sess.run(None, feed)
    run_s, outputs = [], []
    for _ in range(runs):
        t = time.perf_counter()
        outputs = sess.run(None, feed)
        run_s.append(time.perf_counter() - t)
    # Every model here has one output (the logits); a second one would be reported, not compared.
    return outputs[0], {"session_s": session_s, "warmup_runs": warmup, "run_s": run_s, "n_outputs": len(outputs)}


def environment() -> dict[str, Any]:
    return {"machine": platform.machine(), "python": platform.python_version(),
            "onnxruntime": ort.__version__, "numpy": np.__version__,
            "providers": ort.get_available_providers(), "platform": platform.platform()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--input", required=True, type=Path, help="float32 .npy input, fed to every model")
    ap.add_argument("--out-dir", required=True, type=Path)
    ap.add_argument("--json", required=True, type=Path)
    ap.add_argument("--runs", type=int, default=3, help="timed runs of each model")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs before them")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    if args.runs < 1 or args.warmup < 0:
        ap.error("--runs must be >= 1 and --warmup >= 0")
    x = np.load(args.input)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"environment": environment(), "runs": args.runs, "threads": args.threads,
                              "models": {}}
    for path in args.models:
        print(f"[arm_runner] {platform.machine()}: {path.name}", file=sys.stderr, flush=True)
        y, times = run_model(path, x, args.runs, args.threads, args.warmup)
        np.save(args.out_dir / f"{path.stem}.npy", y)
        report["models"][path.name] = times
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
