"""Do ghostify's exported models give the same outputs on aarch64 onnxruntime as in torch?

There is no ARM machine here, so the aarch64 build of onnxruntime runs under qemu user emulation
in an arm64 Debian root (``bench/arm_root.sh`` builds it once, or reuses it). For each model:

1. on x86, in this process: build it with a fixed seed and ``torch.save`` it (``orig.pt``);
   ``ghostify convert orig.pt --s 2 --d 3`` (the CLI, in a subprocess) writes the Ghost model;
   ``ghostify export`` writes both in their deployment form. The models are built here, never as
   ``torchvision:NAME`` in each subprocess: a registry model's random init differs per process.
2. torch references on one seeded input (``torch.load`` of the .pt, ``ghostify.load`` of the
   .ghost, eval mode), and x86 onnxruntime's outputs, through the same runner as on aarch64;
3. in the root, under emulation: ``bench/arm_runner.py`` (numpy + onnxruntime only) runs every
   .onnx and saves the outputs;
4. relative error max|a - b| / max|b| of each against torch; the bar is ``--bar`` (1e-4).

GhostNet-1.0 is a Ghost network already: its "original" is ghostify's GhostNet as built, and its
"ghost" row is what ``ghostify convert`` still finds to convert in it (the SE, shortcut and
head 1x1 convolutions; the JSON says how many).

Reproducibility: the originals' weights and the input are seeded (``--seed``), so their rows
repeat exactly; the Ghost layers get ``ghostify convert``'s own random init, which the CLI does not
seed, so the ghost rows' errors change from run to run (within the same order of magnitude).

    python bench/arm_parity.py [--only resnet18,ghostnet_100] [--root PATH] [--runs 3]

Needs root (chroot). Takes /tmp/ghostify-bench.lock for the whole run (do not wrap it in flock):
the emulated runs load both cores. Writes ``bench/results/arm_parity.json`` (with --only: only
to an explicit --json). Exit 1 if a model misses the bar. A bench script: no test calls it.
The models, inputs and outputs stay in ROOT/var/tmp/ghostify-arm-parity until the next run.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))

import arm_runner  # noqa: E402 - bench/ is put on the path just above

MODELS = {
    "resnet18": "torchvision:resnet18",
    "resnet50": "torchvision:resnet50",
    "mobilenet_v2": "torchvision:mobilenet_v2",
    "ghostnet_100": "ghostify:ghostnet_100",
}
INPUT_SIZE = (3, 224, 224)
WORK = "/var/tmp/ghostify-arm-parity"  # inside the root: the x86 side writes there, aarch64 reads
LOCK = "/tmp/ghostify-bench.lock"
CPUINFO_NOTE = ("the root has no /proc or /sys mounted, so onnxruntime's cpuinfo library fails to "
                "initialise (warnings above) and onnxruntime reads the ARM features from getauxval(AT_HWCAP), "
                "i.e. from qemu's emulated CPU; with the host's /proc and /sys mounted, qemu 7.2 passes the x86 "
                "/proc/cpuinfo through and onnxruntime segfaults at import")
DEFAULT_ROOT = "/var/tmp/ghostify-arm64"  # the same default as arm_root.sh
DEFAULT_JSON = BENCH / "results" / "arm_parity.json"
NOT_LATENCY = ("emulated timings are NOT latencies: qemu user emulation translates every aarch64 "
               "instruction, so it runs many times slower than native hardware, and ratios between "
               "models or forms under emulation say nothing about an ARM device")


@dataclass
class Variant:
    """One exported model: a model's original or Ghost form."""

    model: str
    form: str  # "original" or "ghost"
    source: Path  # .pt (original) or .ghost (converted)
    onnx: Path
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.model}.{self.form}"


def say(msg: str) -> None:
    print(f"[arm_parity] {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def bench_lock() -> Iterator[None]:
    """Hold the machine's benchmark lock: two timing runs at once on 2 cores spoil both."""
    with open(LOCK, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for {LOCK} (another benchmark is running)")
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def run(cmd: list[str], env: dict[str, str] | None = None, stderr: Path | None = None) -> str:
    """Run ``cmd`` and return its stdout; its stderr is shown as it comes, or kept in ``stderr``."""
    with open(stderr, "w") if stderr else contextlib.nullcontext() as err:
        proc = subprocess.run(cmd, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=err, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + (stderr.read_text() if stderr else "")).strip().splitlines()[-8:])
        raise SystemExit(f"[arm_parity] FAILED (exit {proc.returncode}): {shlex.join(cmd)}\n{tail}")
    return proc.stdout


def ghostify_cli(*args: str | Path) -> str:
    """``ghostify ARGS`` in a subprocess, importing the package from this checkout."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return run([sys.executable, "-m", "ghostify", *map(str, args)], env={"PYTHONPATH": path})


def arm_root(root: Path, *cmd: str, stderr: Path | None = None) -> str:
    """Build or reuse the arm64 root; with ``cmd``, run it inside the root (its venv on PATH)."""
    env = {"GHOSTIFY_ARM_ROOT": str(root), "GHOSTIFY_ARM_HOST_PYTHON": sys.executable}
    return run(["bash", str(BENCH / "arm_root.sh"), *(("run", *cmd) if cmd else ())], env=env, stderr=stderr)


def in_root(root: Path, path: Path) -> str:
    """``path`` (under ``root``) as the root's own processes see it."""
    return "/" + str(path.relative_to(root))


def read_marker(path: Path) -> dict[str, str]:
    """The key=value lines ``arm_root.sh`` writes into its marker files."""
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k: v for k, v in pairs}


def prepare(name: str, spec: str, work: Path, seed: int) -> list[Variant]:
    """Build ``spec`` with a fixed seed, convert it, export both forms through the CLI."""
    import torch

    import ghostify

    size = ",".join(map(str, INPUT_SIZE))
    torch.manual_seed(seed)
    model = ghostify.load_model(spec, input_size=size).model.eval()
    orig = work / f"{name}.orig.pt"
    torch.save(model, orig)  # a whole module: ghostify's safe loader accepts torchvision/ghostify classes
    say(f"{name}: ghostify convert --s 2 --d 3")
    ghost, report = work / f"{name}.ghost.ghost", work / f"{name}.convert.json"
    convert = ["convert", str(orig), "--s", "2", "--d", "3", "--out", str(ghost), "--json", str(report),
               "--input-size", size, "--no-layers"]
    ghostify_cli(*convert)
    totals = json.loads(report.read_text())["totals"]
    variants = [Variant(name, "original", orig, work / f"{name}.orig.onnx", {"spec": spec, "seed": seed})]
    if totals["layers_converted"]:
        variants.append(Variant(name, "ghost", ghost, work / f"{name}.ghost.onnx",
                                {"spec": spec, "seed": seed, "convert": {
                                    "command": shlex.join(["ghostify", *convert]),
                                    "layers_converted": totals["layers_converted"],
                                    "layers_total": totals["layers_total"]}}))
    else:
        say(f"{name}: ghostify convert found nothing to convert; only the original is exported")
    for v in variants:
        say(f"{v.key}: ghostify export --deploy")
        export_json = v.onnx.with_suffix(".export.json")
        ghostify_cli("export", v.source, "--onnx", v.onnx, "--deploy", "--input-size", size, "--json", export_json)
        exported = json.loads(export_json.read_text())
        # max_rel_error: ghostify's own x86 check at export time (its input, not the one used here).
        v.info["export"] = {k: exported.get(k) for k in ("command", "exporter", "opset", "deployed", "size_bytes",
                                                          "max_rel_error")}
    return variants


def torch_reference(v: Variant, x: np.ndarray) -> np.ndarray:
    """The model's torch output on ``x``, loaded back from the file that was exported."""
    import torch

    import ghostify

    model = torch.load(v.source, weights_only=False) if v.form == "original" else ghostify.load(v.source)
    with torch.no_grad():
        return model.eval()(torch.from_numpy(x)).numpy()


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """max|a - b| / max|b|: the error relative to the reference's scale."""
    return float(np.max(np.abs(a.astype(np.float64) - b)) / np.max(np.abs(b)))


def x86_side(variants: list[Variant], x: np.ndarray, work: Path, runs: int, threads: int,
             warmup: int) -> dict[str, Any]:
    """Torch references and x86 onnxruntime outputs, saved next to the models."""
    times = {}
    for v in variants:
        ref = torch_reference(v, x)
        np.save(work / "torch" / f"{v.onnx.stem}.npy", ref)
        y, times[v.onnx.name] = arm_runner.run_model(v.onnx, x, runs, threads, warmup)
        np.save(work / "x86_64" / f"{v.onnx.stem}.npy", y)
    return {"environment": arm_runner.environment(), "models": times}


def aarch64_side(root: Path, variants: list[Variant], work: Path, runs: int, threads: int,
                 warmup: int) -> dict[str, Any]:
    """Run every model in the root under emulation, in one process (one emulated python start)."""
    runner = work / "arm_runner.py"
    shutil.copy(BENCH / "arm_runner.py", runner)  # torch-free: numpy + onnxruntime are all it needs
    cmd = ["python", in_root(root, runner), "--input", in_root(root, work / "input.npy"),
           "--out-dir", in_root(root, work / "aarch64"), "--json", in_root(root, work / "aarch64.json"),
           "--runs", str(runs), "--warmup", str(warmup), "--threads", str(threads),
           *(in_root(root, v.onnx) for v in variants)]
    say(f"aarch64 onnxruntime under qemu: {len(variants)} models x ({warmup} + {runs}) runs")
    t0 = time.perf_counter()
    arm_root(root, *cmd, stderr=work / "aarch64.stderr")
    report = json.loads((work / "aarch64.json").read_text())
    report["process_s"] = time.perf_counter() - t0
    # onnxruntime's own complaints (e.g. cpuinfo finding no /proc or /sys in the root), kept once each.
    lines = (work / "aarch64.stderr").read_text().splitlines()
    report["stderr_notes"] = list(dict.fromkeys(ln for ln in lines if "arm_root" not in ln and "arm_runner" not in ln))
    return report


def import_check(root: Path) -> dict[str, Any]:
    """Does plain ``python3 -c 'import onnxruntime, numpy, typer, rich'`` work in the root?"""
    code = ("import json, platform, onnxruntime, numpy, typer, rich; from importlib.metadata import version; "
            "print(json.dumps({'machine': platform.machine(), "
            "**{p: version(p) for p in ('onnxruntime', 'numpy', 'typer', 'rich')}}))")
    t0 = time.perf_counter()
    out = json.loads(arm_root(root, "python3", "-c", code).strip().splitlines()[-1])
    return {"command": f"python3 -c {shlex.quote('import onnxruntime, numpy, typer, rich')}", "ok": True,
            "versions": out, "wall_s": time.perf_counter() - t0}


def compare(variants: list[Variant], work: Path, x86: dict[str, Any], arm: dict[str, Any],
            bar: float) -> list[dict[str, Any]]:
    """One row per exported model: relative errors of both onnxruntimes against torch."""
    rows = []
    for v in variants:
        ref = np.load(work / "torch" / f"{v.onnx.stem}.npy")
        y_x86 = np.load(work / "x86_64" / f"{v.onnx.stem}.npy")
        y_arm = np.load(work / "aarch64" / f"{v.onnx.stem}.npy")
        err = {"aarch64_vs_torch": rel_err(y_arm, ref), "x86_64_vs_torch": rel_err(y_x86, ref),
               "aarch64_vs_x86_64": rel_err(y_arm, y_x86)}
        t_arm, t_x86 = arm["models"][v.onnx.name], x86["models"][v.onnx.name]
        rows.append({
            "model": v.model, "form": v.form, "onnx": v.onnx.name, "output_shape": list(ref.shape),
            "rel_error": err, "passed": err["aarch64_vs_torch"] <= bar and err["x86_64_vs_torch"] <= bar,
            "emulated_aarch64_s": {"session": t_arm["session_s"], "runs": t_arm["run_s"],
                                   "median_run": float(np.median(t_arm["run_s"]))},
            "native_x86_64_s": {"session": t_x86["session_s"], "runs": t_x86["run_s"],
                                "median_run": float(np.median(t_x86["run_s"]))},
            **v.info,
        })
    return rows


def host_info() -> dict[str, Any]:
    import onnxruntime
    import torch

    qemu = run(["qemu-aarch64-static", "--version"]).splitlines()[0]
    return {"machine": platform.machine(), "platform": platform.platform(), "cpu": cpu_model(),
            "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__, "numpy": np.__version__, "qemu": qemu}


def cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def slowdown(rows: list[dict[str, Any]]) -> list[float]:
    """Emulated / native median run time, lowest and highest over the rows."""
    ratios = [r["emulated_aarch64_s"]["median_run"] / r["native_x86_64_s"]["median_run"] for r in rows]
    return [min(ratios), max(ratios)]


def print_table(rows: list[dict[str, Any]], arm_env: dict[str, Any], bar: float) -> None:
    print(f"\naarch64: platform.machine() = {arm_env['machine']}, onnxruntime {arm_env['onnxruntime']} "
          f"(qemu user emulation); bar: rel. error <= {bar:g}")
    head = f"{'model':<14}{'form':<10}{'aarch64 vs torch':>18}{'x86_64 vs torch':>17}{'arm vs x86':>12}" \
           f"{'emulated run s':>16}{'x86 run s':>11}  ok"
    print(head)
    print("-" * len(head))
    for r in rows:
        e = r["rel_error"]
        print(f"{r['model']:<14}{r['form']:<10}{e['aarch64_vs_torch']:>18.2e}{e['x86_64_vs_torch']:>17.2e}"
              f"{e['aarch64_vs_x86_64']:>12.2e}{r['emulated_aarch64_s']['median_run']:>16.2f}"
              f"{r['native_x86_64_s']['median_run']:>11.3f}  {'yes' if r['passed'] else 'NO'}")
    lo, hi = slowdown(rows)
    print(f"\nNOTE: {NOT_LATENCY}. Here emulation was {lo:.0f}-{hi:.0f}x slower than native x86 onnxruntime.")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(MODELS)}")
    ap.add_argument("--root", type=Path, default=Path(os.environ.get("GHOSTIFY_ARM_ROOT", DEFAULT_ROOT)),
                    help=f"the arm64 root, built there if absent (default $GHOSTIFY_ARM_ROOT or {DEFAULT_ROOT})")
    ap.add_argument("--runs", type=int, default=3, help="timed runs of each model per architecture")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs of each model before them")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    ap.add_argument("--seed", type=int, default=0, help="seed of the models' init and of the input")
    ap.add_argument("--bar", type=float, default=1e-4, help="largest relative error that passes")
    ap.add_argument("--json", type=Path, default=None, help=f"output (default {DEFAULT_JSON.relative_to(REPO)}; "
                                                            "with --only, none unless given)")
    args = ap.parse_args(argv)
    names = args.only.split(",") if args.only else list(MODELS)
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        ap.error(f"--only: unknown {', '.join(unknown)} (known: {', '.join(MODELS)})")
    if args.runs < 1 or args.warmup < 0:
        ap.error("--runs must be >= 1 and --warmup >= 0")
    args.names = names
    args.json = args.json or (None if args.only else DEFAULT_JSON)
    args.root = args.root.resolve()
    return args


def reset_work(work: Path) -> None:
    """An empty work directory inside the root (the previous run's files are dropped first)."""
    shutil.rmtree(work, ignore_errors=True)
    for sub in ("torch", "x86_64", "aarch64"):
        (work / sub).mkdir(parents=True)


def command_line(argv: list[str] | None) -> str:
    words = [sys.executable, sys.argv[0], *(sys.argv[1:] if argv is None else argv)]
    path = os.environ.get("PYTHONPATH")
    return (f"PYTHONPATH={shlex.quote(path)} " if path else "") + shlex.join(words)


def result_json(args: argparse.Namespace, argv: list[str] | None, rows: list[dict[str, Any]],
                arm: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": "arm_parity",
        "command": command_line(argv), "cwd": os.getcwd(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "timings_note": NOT_LATENCY,
        "emulation_slowdown_vs_native_x86_64": slowdown(rows),
        "bar_rel_error": args.bar, "passed": all(r["passed"] for r in rows),
        "rel_error_definition": "max|a - b| / max|b|, b = torch (eval mode) on the same input",
        "input": {"shape": [1, *INPUT_SIZE], "dtype": "float32", "seed": args.seed,
                  "distribution": "standard normal, numpy.random.default_rng(seed)"},
        "host": host_info(),
        "aarch64": {**arm["environment"], "runs": arm["runs"], "warmup": args.warmup, "threads": arm["threads"],
                    "runner_process_s": arm["process_s"], "execution": "qemu user emulation (binfmt_misc), chroot",
                    "stderr_notes": arm["stderr_notes"], "cpuinfo_note": CPUINFO_NOTE},
        "root": {"path": str(args.root), "base": read_marker(args.root / ".ghostify-base"),
                 "venv": read_marker(args.root / ".ghostify-ready")},
        **extra,
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    with bench_lock():
        say(f"arm64 root {args.root}: build or reuse")
        t0 = time.perf_counter()
        arm_root(args.root)
        root_s = time.perf_counter() - t0
        work = args.root / WORK.lstrip("/")
        reset_work(work)
        x = np.random.default_rng(args.seed).standard_normal((1, *INPUT_SIZE)).astype(np.float32)
        np.save(work / "input.npy", x)
        variants = [v for n in args.names for v in prepare(n, MODELS[n], work, args.seed)]
        x86 = x86_side(variants, x, work, args.runs, args.threads, args.warmup)
        arm = aarch64_side(args.root, variants, work, args.runs, args.threads, args.warmup)
        imports = import_check(args.root)
    rows = compare(variants, work, x86, arm, args.bar)
    extra = {"import_check_in_root": imports, "arm_root_sh_s": root_s, "work_dir": str(work),
             "total_wall_s": time.perf_counter() - t_start}
    result = result_json(args, argv, rows, arm, extra)
    print_table(rows, arm["environment"], args.bar)
    print(f"import onnxruntime, numpy, typer, rich in the root: {imports['versions']}")
    print(f"total wall time {extra['total_wall_s']:.0f} s")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
