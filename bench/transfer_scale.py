"""Issue 11's scale bars: transfer init's wall time and peak memory as models get deeper.

    python bench/transfer_scale.py [--models resnet18,resnet50,resnet101] [--synthetic resnet50]

Each run is a fresh ``/usr/bin/time -v ghostify convert torchvision:M --s 2 --d 3 --init transfer
--calib fashion-mnist:DIR --calib-samples 256 --no-layers`` (wall time and peak RSS of the whole
process, Python start-up and imports included), then ``--calib synthetic`` for the models named.
Cost per converted layer and per GMAC of the original shows the growth: O(L) keeps them flat as
depth grows; the old per-layer re-run from the input made the cost per layer grow with L.
The refinement has a fixed total budget (``TransferConfig.refine_seconds``), reported apart.
Writes bench/results/transfer_scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FMNIST = "/usr/share/datasets/fashion-mnist"


def _time_v(stderr: str) -> tuple[float, int]:
    """Wall seconds and peak RSS bytes from GNU time's -v report."""
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", stderr).group(1)
    parts = [float(p) for p in wall.split(":")]
    seconds = sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr).group(1))
    return seconds, rss_kb * 1024


def run_one(model: str, calib: str, tmp: Path) -> dict[str, Any]:
    out, rep = tmp / f"{model}-{calib.split(':')[0]}.ghost", tmp / f"{model}.json"
    for p in (out, rep):
        p.unlink(missing_ok=True)
    calib_args = ["--calib", calib] + (["--calib-samples", "256"] if calib != "synthetic" else [])
    cmd = ["/usr/bin/time", "-v", str(Path(sys.executable).with_name("ghostify")), "convert",
           f"torchvision:{model}", "--s", "2", "--d", "3", "--init", "transfer", *calib_args,
           "--out", str(out), "--json", str(rep), "--no-layers"]
    print("$", shlex.join(cmd[2:]), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{model}: exit {proc.returncode}\n{proc.stderr[-2000:]}")
    wall, rss = _time_v(proc.stderr)
    report = json.loads(rep.read_text())
    layers = [x for x in report["layers"] if x["converted"]]
    transfer = report["transfer"]
    fit_seconds = transfer["seconds"] - transfer.get("refine_seconds", 0.0)
    macs = report["totals"]["macs_before"] / 1e9
    row = {
        "model": model, "calib": calib.split(":")[0], "command": shlex.join(cmd[2:]).replace(str(tmp), "TMP"),
        "wall_s": round(wall, 1), "peak_rss_gib": round(rss / 2**30, 2), "converted_layers": len(layers),
        "gmacs_original": round(macs, 2), "transfer_s": transfer["seconds"],
        "refine_s": transfer.get("refine_seconds"), "fit_s": round(fit_seconds, 1),
        "fit_s_per_layer": round(fit_seconds / len(layers), 2), "fit_s_per_gmac": round(fit_seconds / macs, 1),
        "synthetic": transfer.get("synthetic"), "output_error": transfer.get("output_error"),
        "every_layer_fitted_on": sorted({x["transfer_fit"] for x in layers}),
        "activations_peak_bytes": transfer.get("activations_peak_bytes"),
        "activations_spilled_bytes": transfer.get("activations_spilled_bytes"),
    }
    print(json.dumps({k: v for k, v in row.items() if k != "command"}), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet18,resnet50,resnet101")
    ap.add_argument("--synthetic", default="resnet50", help="models also run with --calib synthetic ('' for none)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "transfer_scale.json")
    ap.add_argument("--merge", action="store_true", help="replace only these runs in an existing --out")
    args = ap.parse_args()
    if not Path(FMNIST).is_dir():
        raise SystemExit(f"{FMNIST} missing: apt-get install -y dataset-fashion-mnist")
    load = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run_one(m, f"fashion-mnist:{FMNIST}", Path(tmp)) for m in args.models.split(",") if m]
        rows += [run_one(m, "synthetic", Path(tmp)) for m in args.synthetic.split(",") if m]
    command = shlex.join(["python", *sys.argv]).replace(str(ROOT) + "/", "")
    for row in rows:
        row["load_average_before"], row["bench_command"] = load, command
    if args.merge and args.out.exists():  # rows re-measured replace their namesakes, the rest stay
        new = {(r["model"], r["calib"]) for r in rows}
        rows = [r for r in json.loads(args.out.read_text())["runs"] if (r["model"], r["calib"]) not in new] + rows
    result = {"bench": "transfer_scale", "command": command,
              "cpus": os.cpu_count(), "runs": rows,
              "note": "fresh process per run under /usr/bin/time -v; the refinement's total budget is fixed "
                      "(TransferConfig.refine_seconds), so fit_s excludes it"}
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
