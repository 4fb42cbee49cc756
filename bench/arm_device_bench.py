"""``ghostify bench`` and ``ghostify check`` on aarch64 with no torch: the device bench, run in the arm64 root.

The arm64 Debian root of ``bench/arm_root.sh`` (built once, or reused) holds a venv with only
onnxruntime, numpy, typer and rich (their aarch64 wheels), run under qemu user emulation. This:

1. on x86 exports ResNet-18 and its Ghost form (``ghostify convert`` + ``ghostify export``, input
   3x64x64 so that emulation stays quick) into ROOT/var/tmp/ghostify-arm-device;
2. copies this checkout's ``ghostify/`` to ROOT/opt/ghostify-src (the board's copy of the source);
3. checks inside the root that torch, torchvision, timm, fvcore, onnx, onnxscript and safetensors
   are not installed there at all;
4. runs, inside the root, ``PYTHONPATH=/opt/ghostify-src python -m ghostify bench a.onnx b.onnx
   --runs 3 --json out.json`` and ``python -m ghostify check out.json --max-latency-ratio 10``,
   which must both exit 0;
5. the other way onto a board: a wheel built here (``pip wheel --no-deps``), installed with
   ``pip install --no-deps`` into a fresh venv in the root next to the same four packages, then
   its ``ghostify bench`` console script (``--no-wheel`` skips this);
6. writes ``bench/results/arm_device_bench.json``: the commands, their exit codes, the CPU report as
   ``ghostify bench`` parsed it inside the root, and the bench JSON itself.

Emulated timings are NOT latencies (see ``NOT_LATENCY``): this proves the bench runs on aarch64
without torch and that its JSON feeds ``check``, nothing about speed on an ARM board.

    python bench/arm_device_bench.py [--root PATH] [--json PATH] [--no-wheel]

Needs root (chroot). Takes /tmp/ghostify-bench.lock for the whole run (do not wrap it in flock).
Exit 0 when both commands exit 0 in the root and torch is absent there, else 1. A bench script:
no test calls it. About 3 minutes on 2 cores, plus any wait for the lock (``total_wall_s`` counts it).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
sys.path.insert(0, str(BENCH))

import arm_parity  # noqa: E402 - bench/ is put on the path just above
from arm_parity import DEFAULT_ROOT, NOT_LATENCY, arm_root, bench_lock, ghostify_cli, read_marker  # noqa: E402

WORK = "/var/tmp/ghostify-arm-device"  # inside the root
SRC = "/opt/ghostify-src"  # inside the root: the board's copy of ghostify/
VENV_PY = "/opt/ghostify-venv/bin/python"
WHEEL_VENV = "/opt/ghostify-wheel-venv"  # inside the root: the four packages + ghostify's wheel, --no-deps
DIST = "/opt/ghostify-dist"  # inside the root: the wheel built on x86
SIZE = "3,64,64"
ABSENT = ("torch", "torchvision", "timm", "fvcore", "onnx", "onnxscript", "safetensors")
DEFAULT_JSON = BENCH / "results" / "arm_device_bench.json"
CPU_NOTE = ("the root has no /proc mounted (with it, qemu 7.2 shows the x86 host's /proc/cpuinfo and onnxruntime "
            "segfaults at import), so cpu_info finds no /proc/cpuinfo there and falls back to platform.machine(); "
            "on a real board it reads the ARM cpuinfo (tests/test_cpuinfo.py)")


def say(msg: str) -> None:
    print(f"[arm_device_bench] {msg}", file=sys.stderr, flush=True)


def in_root(root: Path, *cmd: str) -> dict[str, Any]:
    """Run ``cmd`` inside the root (clean environment, the venv first on PATH); exit code, output, time."""
    env = {**os.environ, "GHOSTIFY_ARM_ROOT": str(root), "GHOSTIFY_ARM_HOST_PYTHON": sys.executable}
    t0 = time.perf_counter()
    proc = subprocess.run(["bash", str(BENCH / "arm_root.sh"), "run", *cmd], env=env, capture_output=True,
                          text=True)
    stderr = [line for line in proc.stderr.splitlines() if not line.startswith("[arm_root]")]
    return {"command": shlex.join(cmd), "exit_code": proc.returncode, "wall_s": round(time.perf_counter() - t0, 1),
            "stdout": proc.stdout.splitlines(), "stderr": stderr}


def export_models(work: Path) -> dict[str, Any]:
    """ResNet-18 (A) and its Ghost form (B) in deployment form, exported on x86 through the CLI."""
    a, b, ghost = work / "a.onnx", work / "b.onnx", work / "resnet18.ghost"
    steps = [["export", "torchvision:resnet18", "--input-size", SIZE, "--onnx", str(a)],
             ["convert", "torchvision:resnet18", "--input-size", SIZE, "--out", str(ghost), "--no-layers"],
             ["export", str(ghost), "--onnx", str(b)]]
    for step in steps:
        say("x86: ghostify " + shlex.join(step))
        ghostify_cli(*step)
    return {"commands": ["ghostify " + shlex.join(s) for s in steps],
            "a_bytes": a.stat().st_size, "b_bytes": b.stat().st_size}


def copy_source(root: Path) -> None:
    """This checkout's ghostify/ to ROOT/opt/ghostify-src, as one would copy it to a board."""
    dest = root / SRC.lstrip("/")
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(REPO / "ghostify", dest / "ghostify", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def absent_check(root: Path) -> dict[str, Any]:
    """Which of ``ABSENT`` the root's venv can find at all (none should be), and what it has installed."""
    code = ("import importlib.metadata as m, importlib.util as u, json, sys; "
            f"print(json.dumps({{'found': [n for n in {ABSENT!r} if u.find_spec(n)], "
            "'installed': sorted(f\"{d.metadata['Name']}=={d.version}\" for d in m.distributions())}))")
    step = in_root(root, "env", f"PYTHONPATH={SRC}", VENV_PY, "-c", code)
    step.update(json.loads(step["stdout"][-1]) if step["exit_code"] == 0 else {"found": None})
    return step


def device_commands(root: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]:
    """``ghostify bench`` then ``ghostify check`` inside the root; their steps and the bench JSON."""
    work = root / WORK.lstrip("/")
    (work / "out.json").unlink(missing_ok=True)
    py = ["env", f"PYTHONPATH={SRC}", VENV_PY, "-m", "ghostify"]
    say("aarch64: ghostify bench a.onnx b.onnx --runs 3 --json out.json (emulated)")
    bench = in_root(root, "sh", "-c", f"cd {WORK} && exec {shlex.join(py)} bench a.onnx b.onnx --runs 3 "
                                      "--json out.json")
    data = json.loads((work / "out.json").read_text()) if (work / "out.json").exists() else None
    say("aarch64: ghostify check out.json --max-latency-ratio 10")
    check = in_root(root, "sh", "-c", f"cd {WORK} && exec {shlex.join(py)} check out.json --max-latency-ratio 10")
    return bench, check, data


def build_wheel(dist: Path) -> None:
    """``pip wheel --no-deps`` of a copy of this checkout (setuptools leaves build/ and *.egg-info behind)."""
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("pyproject.toml", "README.md"):
            shutil.copy(REPO / name, tmp)
        shutil.copytree(REPO / "ghostify", Path(tmp) / "ghostify", ignore=shutil.ignore_patterns("__pycache__"))
        arm_parity.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(dist), tmp])


def wheel_install(root: Path) -> dict[str, Any]:
    """Build ghostify's wheel here; in the root, a fresh venv with the four packages and it (--no-deps), then
    its ``ghostify bench`` console script. Exit codes of each step."""
    dist = root / DIST.lstrip("/")
    shutil.rmtree(dist, ignore_errors=True)
    say("x86: pip wheel --no-deps . (ghostify's own wheel, pure Python)")
    build_wheel(dist)
    wheel = arm_parity.in_root(root, next(dist.glob("ghostify-*.whl")))
    pip = [f"{WHEEL_VENV}/bin/python", "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-index"]
    steps = [["/usr/bin/python3", "-m", "venv", "--clear", WHEEL_VENV],
             [*pip, "--find-links", "/opt/ghostify-wheels", "onnxruntime", "numpy", "typer", "rich"],
             [*pip, "--no-deps", wheel],
             ["sh", "-c", f"cd {WORK} && exec {WHEEL_VENV}/bin/ghostify bench a.onnx b.onnx --runs 3 "
                          "--json out-wheel.json"]]
    done = []
    for step in steps:
        say("aarch64: " + shlex.join(step[-1:] if step[0] == "sh" else step))
        done.append(in_root(root, *step))
        if done[-1]["exit_code"] != 0:
            break
    out = root / WORK.lstrip("/") / "out-wheel.json"
    return {"steps": done, "exit_code": done[-1]["exit_code"], "wheel": wheel,
            "bench_json_written": out.exists()}


def result_json(argv: list[str] | None, args: argparse.Namespace, parts: dict[str, Any]) -> dict[str, Any]:
    bench, check, absent, data = parts["bench"], parts["check"], parts["absent"], parts["bench_json"]
    passed = bench["exit_code"] == 0 and check["exit_code"] == 0 and absent["found"] == [] and data is not None
    wheel = parts["wheel"]
    passed = passed and (wheel is None or (wheel["exit_code"] == 0 and wheel["bench_json_written"]))
    return {
        "kind": "arm_device_bench",
        "command": arm_parity.command_line(argv), "cwd": os.getcwd(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "timings_note": NOT_LATENCY, "passed": passed,
        "bar": "in the arm64 root, with only onnxruntime, numpy, typer and rich installed, ghostify bench and "
               "ghostify check exit 0 and bench writes its JSON",
        "execution": "qemu user emulation (binfmt_misc), chroot; ghostify from PYTHONPATH=" + SRC,
        "root": {"path": str(args.root), "base": read_marker(args.root / ".ghostify-base"),
                 "venv": read_marker(args.root / ".ghostify-ready")},
        "models": parts["models"],
        "not_installed_in_root": {"checked": list(ABSENT), **absent},
        "bench": bench, "check": check,
        "wheel_install": wheel,
        "cpu_in_root": (data or {}).get("cpu"), "cpu_note": CPU_NOTE,
        "bench_json": data,
        "total_wall_s": parts["total_wall_s"],
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path(os.environ.get("GHOSTIFY_ARM_ROOT", DEFAULT_ROOT)),
                    help="the arm64 root (built there if missing)")
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where the result goes")
    ap.add_argument("--no-wheel", action="store_true", help="skip the pip install --no-deps check")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    with bench_lock():
        say(f"arm64 root {args.root}: build or reuse")
        arm_root(args.root)
        work = args.root / WORK.lstrip("/")
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        models = export_models(work)
        copy_source(args.root)
        absent = absent_check(args.root)
        bench, check, data = device_commands(args.root)
        wheel = None if args.no_wheel else wheel_install(args.root)
    parts = {"models": models, "absent": absent, "bench": bench, "check": check, "bench_json": data, "wheel": wheel,
             "total_wall_s": round(time.perf_counter() - t0, 1)}
    result = result_json(argv, args, parts)
    for name in ("bench", "check"):
        print(f"{name} in the root: exit {parts[name]['exit_code']} ({parts[name]['wall_s']} s)")
        print("\n".join("  " + line for line in parts[name]["stdout"]))
    if wheel is not None:
        print(f"pip install --no-deps wheel, then its ghostify bench: exit {wheel['exit_code']}")
    print(f"not installed in the root: {', '.join(ABSENT)} -> found {absent['found']}")
    print(f"CPU as parsed in the root: {result['cpu_in_root']}")
    print(f"note: {NOT_LATENCY}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}; {'passed' if result['passed'] else 'FAILED'}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
