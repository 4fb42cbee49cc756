"""Why pruning runs faster than Ghost on the Fashion-MNIST CNN of ``bench/vs_pruning.py`` on some CPUs.

    python bench/conv_shapes.py [--runs 2000] [--out bench/results/conv_shapes.json]

Times, alone and interleaved in one onnxruntime run (CPU EP, ORT_ENABLE_ALL, 1 thread, batch 1),
the layers that decide the CNN's latency, each in its deployment form (conv, folded BN, ReLU):

* layer 2 (16 -> 32 maps at 28x28) and layer 4 (32 -> 64 at 14x14) as in the baseline;
* the same layers as Ghost modules at s=2, d=3 (``ghostify.tune.table.variants``, as the latency-aware
  policy times them: ``GhostModule.fuse()``, the primary convolution
  making n/2 intrinsic maps and the depthwise cheap operation, outputs kept as parts as the graph
  pass keeps them), and each of the two convolutions alone;
* the same layers in the uniformly pruned models of the bench (round_to 8): pruning also cuts the
  layer's *input* maps (the previous layer's outputs), which a Ghost module never changes;
* a ReLU alone: the fixed cost of one ``session.run`` call, in every figure.

Writes JSON with the CPU; absolute microseconds on a shared machine are noise, compare within one run.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ghostify.export import export_onnx  # noqa: E402
from ghostify.runtime.cpu import cpu_info  # noqa: E402
from ghostify.runtime.latency import percentiles, time_onnx  # noqa: E402
from ghostify.tune.table import CONV, LayerCase, variants  # noqa: E402

# (layer, c, n, map size): the baseline's layers 2 and 4, and their pruned widths (bench/vs_pruning.py)
LAYERS = {"layer 2": (16, 32, 28), "layer 4": (32, 64, 14)}
PRUNED = {"layer 2": {"r8 (both models)": (8, 24)},
          "layer 4": {"r8 p0.01": (24, 56), "r8 at s=2's MACs": (24, 48)}}


def layer(c: int, n: int, hw: int, groups: int = 1, ghost: bool = False) -> nn.Module:
    """A 3x3 convolution + ReLU in deployment form, as the latency table times it: the layer itself, or
    (``ghost``) its Ghost module at s=2, d=3 with its outputs kept as parts (``ghostify.tune.table``)."""
    case = LayerCase("layer", nn.Conv2d(c, n, 3, padding=1, groups=groups), (1, c, hw, hw), 3, nn.ReLU(),
                     s_choices=(2,) if ghost else ())
    return variants(case)["s2" if ghost else CONV]


def cases() -> dict[str, tuple[nn.Module, tuple[int, int, int]]]:
    out: dict[str, tuple[nn.Module, tuple[int, int, int]]] = {"ReLU alone (call overhead)": (nn.ReLU(), (16, 28, 28))}
    for name, (c, n, hw) in LAYERS.items():
        m = n // 2
        out[f"{name}: original {c}->{n}"] = (layer(c, n, hw), (c, hw, hw))
        out[f"{name}: ghost s=2 module"] = (layer(c, n, hw, ghost=True), (c, hw, hw))
        out[f"{name}: ghost primary {c}->{m}"] = (layer(c, m, hw), (c, hw, hw))
        out[f"{name}: ghost cheap dw {m}"] = (layer(m, m, hw, groups=m), (m, hw, hw))
        for pname, (pc, pn) in PRUNED[name].items():
            out[f"{name}: pruned {pname} {pc}->{pn}"] = (layer(pc, pn, hw), (pc, hw, hw))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=2000)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "conv_shapes.json"))
    args = ap.parse_args()
    torch.manual_seed(0)
    models = cases()
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, (model, size) in enumerate(models.values()):
            paths.append(Path(tmp) / f"m{i}.onnx")
            export_onnx(model.eval(), paths[-1], size, deploy=False)
        timed = time_onnx(paths, threads=1, runs=args.runs, warmup=100)
    rows = {}
    for (name, (_, size)), t in zip(models.items(), timed, strict=True):
        p = percentiles(np.asarray(t.times_ms) * 1e3)
        rows[name] = {"input": list(size), "median_us": round(p["p50"], 1), "p10_us": round(p["p10"], 1),
                      "p90_us": round(p["p90"], 1)}
        print(f"{name:38s} {p['p50']:7.1f} us")
    data = {"command": "python " + " ".join(shlex.quote(a) for a in ["bench/conv_shapes.py", *sys.argv[1:]]),
            "cpu": cpu_info(), "runs": args.runs, "threads": 1, "rows": rows}
    Path(args.out).write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
