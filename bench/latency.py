"""Latency vs MACs on onnxruntime CPU (the paper's Fig. 7, for converted classic CNNs).

Every model goes through the same path, ``ghostify.export.export_onnx`` (deployment form, parity
checked), and each converted model is timed interleaved with its original (A B A B ...) by
``ghostify.runtime.latency.bench_onnx``. Weights are random (nothing is downloaded): latency
does not depend on their values, and the Ghost modules are re-initialised like torchvision's
convolutions (Kaiming, fan-out) so activations keep a realistic scale (no denormals).

Stages (``--only``, default all; each updates its key in the JSON):

* ``table``: ResNet-50, ResNet-18, MobileNetV2, VGG-16 (torchvision) at s=2 and s=4 (d=3), and
  GhostNet-1.0 (``ghostify:ghostnet_100``) vs MobileNetV3-Large (``timm:mobilenetv3_large_100``).
* ``ghostnet``: our GhostNet-1.0 exported by ghostify vs timm's ``ghostnet_100`` exported by plain
  ``torch.onnx.export`` (the bar: ours is no slower).
* ``ceiling``: what the bar can reach at best on this CPU. ResNet-50, its s=2 d=3 deployment form,
  that form without the identity 1x1 depthwise convolutions that carry the intrinsic part's
  residual Add + ReLU, and that form with every depthwise convolution cut out of the ONNX graph,
  timed four-way interleaved. The last two compute the wrong function; they only show what the
  identity passes and the cheap operations cost.
* ``ablation``: each rule of the deployment form switched off in turn (ResNet-50 s=2 and s=4,
  MobileNetV2 s=2 and s=4), every variant timed interleaved with the original at 1 thread.
* ``bar``: ResNet-50 s=2 d=3 through the CLI (``ghostify convert``, ``ghostify export`` on both
  models), timed by ``ghostify bench`` and by the independent ``bench/ort_harness.py`` at 1 and
  2 threads.

    python bench/latency.py [--runs 40] [--warmup 5] [--threads 1] [--only table,ghostnet,ceiling,bar,ablation]
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ghostify  # noqa: E402
from ghostify.export import export_onnx  # noqa: E402
from ghostify.layers.ghost import GhostModule  # noqa: E402
from ghostify.report.counting import count_macs  # noqa: E402
from ghostify.runtime import bench_onnx, cpu_info, profile_onnx  # noqa: E402

TABLE = ["resnet50", "resnet18", "mobilenet_v2", "vgg16"]
RATIOS = [2, 4]
D = 3
SIZE = (3, 224, 224)


def reinit(model: nn.Module) -> nn.Module:
    """Ghost modules start from PyTorch's default init; give them torchvision's scale instead."""
    for mod in model.modules():
        if isinstance(mod, GhostModule):
            for sub in mod.modules():
                if isinstance(sub, nn.Conv2d):
                    nn.init.kaiming_normal_(sub.weight, mode="fan_out", nonlinearity="relu")
                elif isinstance(sub, nn.BatchNorm2d):
                    nn.init.ones_(sub.weight)
                    nn.init.zeros_(sub.bias)
    return model.eval()


def macs(model: nn.Module) -> int:
    return int(count_macs(model, torch.randn(1, *SIZE)).total)


def export(model: nn.Module, path: Path, *, deploy: bool = True) -> dict[str, Any]:
    res = export_onnx(model, path, SIZE, deploy=deploy)
    if not res.passed:
        raise SystemExit(f"parity failed for {path}: {res.max_rel_error}")
    return {"exporter": res.exporter, "max_rel_error": res.max_rel_error, "deploy_notes": res.deploy_notes}


def pair(a: Path, b: Path, args: argparse.Namespace, threads: int | None = None) -> dict[str, Any]:
    r = bench_onnx(a, b, threads=threads or args.threads, runs=args.runs, warmup=args.warmup)
    keep = ("latency_ratio", "latency_ratio_p10", "latency_ratio_p90", "speedup", "speedup_p10", "speedup_p90")
    return {"a": r["a"], "b": r["b"], **{k: r[k] for k in keep}}


def stage_table(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    import torchvision

    rows = []
    for name in [n for n in TABLE if n in args.models]:
        t0 = time.time()
        torch.manual_seed(0)
        orig = getattr(torchvision.models, name)().eval()
        base = work / f"{name}.onnx"
        info = export(orig, base)
        base_macs = macs(orig)
        for s in RATIOS:
            ghost = reinit(ghostify.convert(orig, s, D))
            path = work / f"{name}_s{s}d{D}.onnx"
            ginfo = export(ghost, path)
            g_macs = macs(ghost)
            timing = pair(base, path, args)
            row = {"model": f"torchvision:{name}", "s": s, "d": D, "macs_original": base_macs, "macs_ghost": g_macs,
                   "mac_ratio": base_macs / g_macs, "latency_original_ms": timing["a"]["p50_ms"],
                   "latency_original_p10_ms": timing["a"]["p10_ms"], "latency_original_p90_ms": timing["a"]["p90_ms"],
                   "latency_ghost_ms": timing["b"]["p50_ms"], "latency_ghost_p10_ms": timing["b"]["p10_ms"],
                   "latency_ghost_p90_ms": timing["b"]["p90_ms"], "speedup": timing["speedup"],
                   "speedup_p10": timing["speedup_p10"], "speedup_p90": timing["speedup_p90"],
                   "latency_ratio": timing["latency_ratio"], "export_original": info, "export_ghost": ginfo,
                   "runs": args.runs}
            rows.append(row)
            print(f"{name} s={s}: MACs {base_macs / 1e9:.2f}G -> {g_macs / 1e9:.2f}G ({row['mac_ratio']:.2f}x), "
                  f"latency {row['latency_original_ms']:.1f} -> {row['latency_ghost_ms']:.1f} ms, "
                  f"speed-up {row['speedup']:.2f}x (p10 {row['speedup_p10']:.2f}, p90 {row['speedup_p90']:.2f}) "
                  f"[{time.time() - t0:.0f}s]", flush=True)
    if "ghostnet" in args.models:
        rows.append(ghostnet_vs_mnv3(args, work))
    return rows


def merge_rows(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows just measured replace the same model's old rows; the table keeps its order."""
    fresh = {r["model"] for r in new}
    rows = [r for r in old if r["model"] not in fresh] + new
    order = [f"torchvision:{n}" for n in TABLE] + ["ghostify:ghostnet_100"]
    return sorted(rows, key=lambda r: (order.index(r["model"]) if r["model"] in order else len(order),
                                       r.get("s", 0)))


def ghostnet_vs_mnv3(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import timm

    from ghostify.models import list_models

    if "ghostnet_100" not in list_models():
        return {"model": "ghostify:ghostnet_100", "skipped": "ghostify:ghostnet_100 is not registered"}
    ours = ghostify.load_model("ghostify:ghostnet_100").model.eval()
    mnv3 = timm.create_model("mobilenetv3_large_100").eval()
    a, b = work / "mobilenetv3_large_100.onnx", work / "ghostnet_100.onnx"
    ia, ib = export(mnv3, a), export(ours, b)
    timing = pair(a, b, args)
    row = {"model": "ghostify:ghostnet_100", "baseline": "timm:mobilenetv3_large_100", "macs_original": macs(mnv3),
           "macs_ghost": macs(ours), "latency_original_ms": timing["a"]["p50_ms"],
           "latency_original_p10_ms": timing["a"]["p10_ms"], "latency_original_p90_ms": timing["a"]["p90_ms"],
           "latency_ghost_ms": timing["b"]["p50_ms"], "latency_ghost_p10_ms": timing["b"]["p10_ms"],
           "latency_ghost_p90_ms": timing["b"]["p90_ms"], "speedup": timing["speedup"],
           "speedup_p10": timing["speedup_p10"], "speedup_p90": timing["speedup_p90"],
           "latency_ratio": timing["latency_ratio"], "export_original": ia, "export_ghost": ib, "runs": args.runs}
    row["mac_ratio"] = row["macs_original"] / row["macs_ghost"]
    print(f"GhostNet-1.0 vs MobileNetV3-Large: {row['latency_ghost_ms']:.1f} vs {row['latency_original_ms']:.1f} ms "
          f"(speed-up {row['speedup']:.2f}x)", flush=True)
    return row


def stage_ghostnet(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import timm

    from ghostify.models import list_models

    if "ghostnet_100" not in list_models():
        return {"skipped": "ghostify:ghostnet_100 is not registered"}
    timm_model = timm.create_model("ghostnet_100").eval()
    a = work / "timm_ghostnet_100_plain.onnx"
    # timm's GhostNet the way a user would export it: plain torch.onnx.export, today's defaults
    torch.onnx.export(timm_model, (torch.randn(1, *SIZE),), str(a))
    ours = ghostify.load_model("ghostify:ghostnet_100").model.eval()
    b = work / "ghostify_ghostnet_100.onnx"
    info = export(ours, b)
    timing = pair(a, b, args)
    out = {"a": "timm:ghostnet_100 via torch.onnx.export", "b": "ghostify:ghostnet_100 via ghostify export_onnx",
           "macs_timm": macs(timm_model), "macs_ours": macs(ours), "export_ours": info, "runs": args.runs, **timing,
           "no_slower": timing["latency_ratio"] <= 1.0}
    print(f"GhostNet-1.0 ours vs timm: {timing['b']['p50_ms']:.1f} vs {timing['a']['p50_ms']:.1f} ms, speed-up "
          f"{timing['speedup']:.2f}x (p10 {timing['speedup_p10']:.2f}, p90 {timing['speedup_p90']:.2f})", flush=True)
    return out


def _run(cmd: list[str]) -> str:
    print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
    return done.stdout


def stage_bar(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    exe = str(Path(sys.executable).parent / "ghostify")
    ghost = work / "resnet50_s2d3.ghost"
    a, b = work / "bar_resnet50.onnx", work / "bar_resnet50_s2d3.onnx"
    cmds = [[exe, "convert", "torchvision:resnet50", "-s", "2", "-d", "3", "-o", str(ghost), "--no-layers", "--force"],
            [exe, "export", "torchvision:resnet50", "--onnx", str(a), "--force"],
            [exe, "export", str(ghost), "--onnx", str(b), "--force"]]
    for cmd in cmds:
        _run(cmd)
    out: dict[str, Any] = {"commands": [" ".join(shlex.quote(c) for c in cmd) for cmd in cmds]}
    for threads in (1, 2):
        jb, jh = work / f"bench_t{threads}.json", work / f"harness_t{threads}.json"
        runs = str(args.bar_runs)
        _run([exe, "bench", str(a), str(b), "--threads", str(threads), "--runs", runs, "--warmup", "10",
              "--json", str(jb), "--force"])
        _run([sys.executable, str(ROOT / "bench" / "ort_harness.py"), str(a), str(b), "--threads", str(threads),
              "--runs", runs, "--warmup", "10", "--json", str(jh)])
        gb, gh = json.loads(jb.read_text()), json.loads(jh.read_text())
        out[f"threads_{threads}"] = {
            "ghostify_bench": {k: gb[k] for k in ("command", "speedup", "speedup_p10", "speedup_p90", "latency_ratio",
                                                  "a", "b")},
            "ort_harness": {k: gh[k] for k in ("command", "speedup", "speedup_p10", "speedup_p90", "latency_ratio",
                                               "a", "b")},
        }
        print(f"ResNet-50 s=2 d=3, {threads} thread(s): ghostify bench {gb['speedup']:.3f}x, harness "
              f"{gh['speedup']:.3f}x", flush=True)
    out["profile"] = {"original": profile_onnx(a, threads=1, runs=10), "ghost": profile_onnx(b, threads=1, runs=10)}
    return out


def strip_depthwise(src: Path, dst: Path, *, kernel: int | None = None) -> int:
    """Copy ``src`` without its depthwise Conv nodes (and the Add/Relu chained onto each).

    Each removed chain's output is rewired to the depthwise conv's input (same shape: the cheap
    operation is stride 1, m -> m channels). ``kernel=1`` removes only the 1x1 ones (the identity
    convolutions carrying the intrinsic part's residual Add + ReLU). Returns how many were removed.
    """
    import onnx

    m = onnx.load(str(src))
    g = m.graph
    weights = {t.name: list(t.dims) for t in g.initializer if len(t.dims) == 4}
    consumers: dict[str, list[Any]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    drop, rename, removed = set(), {}, 0
    for n in g.node:
        if n.op_type != "Conv":
            continue
        group = next((a.i for a in n.attribute if a.name == "group"), 1)
        w = weights.get(n.input[1])
        if group <= 1 or w is None or group != w[0] or (kernel is not None and w[2:] != [kernel, kernel]):
            continue
        removed += 1
        chain, out = [n], n.output[0]
        for op in ("Add", "Relu"):
            nxt = consumers.get(out, [])
            if len(nxt) == 1 and nxt[0].op_type == op:
                chain.append(nxt[0])
                out = nxt[0].output[0]
        drop.update(id(c) for c in chain)
        rename[out] = n.input[0]
    keep = [n for n in g.node if id(n) not in drop]

    def resolve(name: str) -> str:
        while name in rename:
            name = rename[name]
        return name

    for n in keep:
        for k, i in enumerate(n.input):
            n.input[k] = resolve(i)
    graph_outputs = {o.name for o in g.output}
    if graph_outputs & set(rename):
        raise SystemExit("a depthwise chain feeds a graph output; cannot strip it")
    del g.node[:]
    g.node.extend(keep)
    used = {i for n in keep for i in n.input}
    unused = [t for t in g.initializer if t.name not in used]  # else onnxruntime warns once per weight
    for t in unused:
        g.initializer.remove(t)
    onnx.save(m, str(dst))
    return removed


def stage_ceiling(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import torchvision

    from ghostify.runtime.latency import compare, time_onnx

    orig = torchvision.models.resnet50().eval()
    ghost = reinit(ghostify.convert(orig, 2, D))
    a, b = work / "ceil_resnet50.onnx", work / "ceil_resnet50_s2d3.onnx"
    c, d = work / "ceil_resnet50_s2d3_dense.onnx", work / "ceil_resnet50_s2d3_no_identity.onnx"
    export(orig, a)
    export(ghost, b)
    removed = strip_depthwise(b, c)
    identity = strip_depthwise(b, d, kernel=1)
    by_module = count_macs(ghost, torch.randn(1, *SIZE)).by_module
    cheap_macs = sum(by_module.get(name, 0) for name, mod in ghost.named_modules()
                     if isinstance(mod, nn.Conv2d) and mod.groups > 1 and mod.groups == mod.in_channels)
    out: dict[str, Any] = {"depthwise_convs_removed": removed, "identity_convs_removed": identity,
                           "macs_original": macs(orig), "macs_ghost": macs(ghost),
                           "macs_depthwise_in_ghost": cheap_macs,
                           "models": ["resnet50", "ghost", "ghost without depthwise convs (dense only)",
                                      "ghost without the identity 1x1 depthwise convs"]}
    for threads in (1, 2):
        timed = time_onnx([a, b, c, d], threads=threads, runs=args.bar_runs, warmup=10)
        full, dense, no_id = (compare([timed[0], t]) for t in timed[1:])
        out[f"threads_{threads}"] = {
            "speedup_ghost": full["speedup"], "speedup_ghost_p10_p90": [full["speedup_p10"], full["speedup_p90"]],
            "speedup_dense_only": dense["speedup"],
            "speedup_dense_only_p10_p90": [dense["speedup_p10"], dense["speedup_p90"]],
            "speedup_no_identity": no_id["speedup"],
            "speedup_no_identity_p10_p90": [no_id["speedup_p10"], no_id["speedup_p90"]],
            "p50_ms": [t.summary()["p50_ms"] for t in timed],
        }
        print(f"ceiling, {threads} thread(s): ghost {full['speedup']:.3f}x, without identity passes "
              f"{no_id['speedup']:.3f}x, dense convs only {dense['speedup']:.3f}x "
              f"(MAC ratio {out['macs_original'] / out['macs_ghost']:.3f})", flush=True)
    return out


# Each rule of the deployment form switched off in turn (ghostify.DeployConfig's fields);
# every variant computes the same function (tests/test_deploy.py), only its graph differs.
ABLATION: list[tuple[str, int, list[tuple[str, dict[str, Any]]]]] = [
    ("resnet50", 2, [
        ("training form (paper form; onnxruntime folds the BN, the Concat stays)", {"deploy": False}),
        ("deployment form, parts read through a Concat + one convolution",
         {"split_sum": False, "identity_add": False}),
        ("deployment form, split convolutions W_a a + W_b b, unfused intrinsic Add + ReLU", {"identity_add": False}),
        ("deployment form (all rules)", {}),
    ]),
    ("resnet50", 4, [
        ("deployment form, cheap conv kept as one channel-multiplier conv", {"split_multiplier": False}),
        ("deployment form (all rules)", {}),
    ]),
    ("mobilenet_v2", 2, [
        ("deployment form, split convolutions before ReLU6 too", {"concat_before_other_acts": False}),
        ("deployment form (all rules)", {}),
    ]),
    ("mobilenet_v2", 4, [
        ("deployment form, m not padded to the NCHWc block", {"align": 0}),
        ("deployment form (all rules)", {}),
    ]),
]


def stage_ablation(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    import torchvision

    from ghostify.runtime.latency import compare, time_onnx

    groups = []
    for name, s, variants in ABLATION:
        torch.manual_seed(0)
        orig = getattr(torchvision.models, name)().eval()
        ghost = reinit(ghostify.convert(orig, s, D))
        base = work / f"abl_{name}.onnx"
        export(orig, base)
        paths = [base]
        for k, (_, setting) in enumerate(variants):
            rules = {key: val for key, val in setting.items() if key != "deploy"}
            model = ghost
            if setting.get("deploy", True):
                model = ghostify.deploy(ghost, ghostify.DeployConfig(**rules))
            path = work / f"abl_{name}_s{s}_{k}.onnx"
            export(model, path, deploy=False)  # already in the form to time
            paths.append(path)
        timed = time_onnx(paths, threads=1, runs=args.runs, warmup=args.warmup)
        rows = []
        for (label, setting), t in zip(variants, timed[1:], strict=True):
            c = compare([timed[0], t])
            rows.append({"variant": label, "setting": setting, "speedup": c["speedup"],
                         "speedup_p10": c["speedup_p10"], "speedup_p90": c["speedup_p90"],
                         "p50_ms": t.summary()["p50_ms"]})
            print(f"ablation {name} s={s}: {label}: {c['speedup']:.2f}x", flush=True)
        groups.append({"model": f"torchvision:{name}", "s": s, "d": D, "runs": args.runs,
                       "original_p50_ms": timed[0].summary()["p50_ms"], "variants": rows})
    return groups


def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    rows = [r for r in data.get("rows", []) if "skipped" not in r]
    families: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        families.setdefault(r["model"], []).append(r)
    for model, rs in families.items():
        label = model.split(":")[-1]
        if "baseline" in rs[0]:
            r = rs[0]
            ax.errorbar([r["macs_original"] / 1e6], [r["latency_original_ms"]],
                        yerr=[[r["latency_original_ms"] - r["latency_original_p10_ms"]],
                              [r["latency_original_p90_ms"] - r["latency_original_ms"]]], fmt="s", capsize=3,
                        label="MobileNetV3-Large 1.0 (timm)")
            ax.errorbar([r["macs_ghost"] / 1e6], [r["latency_ghost_ms"]],
                        yerr=[[r["latency_ghost_ms"] - r["latency_ghost_p10_ms"]],
                              [r["latency_ghost_p90_ms"] - r["latency_ghost_ms"]]], fmt="*", markersize=12,
                        capsize=3, label="GhostNet 1.0 (ghostify)")
            continue
        rs = sorted(rs, key=lambda r: r["s"])
        xs = [rs[0]["macs_original"] / 1e6] + [r["macs_ghost"] / 1e6 for r in rs]
        ys = [rs[0]["latency_original_ms"]] + [r["latency_ghost_ms"] for r in rs]
        lo = [rs[0]["latency_original_ms"] - rs[0]["latency_original_p10_ms"]] + [
            r["latency_ghost_ms"] - r["latency_ghost_p10_ms"] for r in rs]
        hi = [rs[0]["latency_original_p90_ms"] - rs[0]["latency_original_ms"]] + [
            r["latency_ghost_p90_ms"] - r["latency_ghost_ms"] for r in rs]
        line = ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o-", capsize=3, label=f"{label}: original, s=2, s=4")
        for x, y, tag in zip(xs, ys, ["orig"] + [f"s={r['s']}" for r in rs], strict=True):
            ax.annotate(tag, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7,
                        color=line[0].get_color())
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("MACs (millions, log scale)")
    ax.set_ylabel("latency, median ms (log scale; bars p10-p90)")
    cpu = data.get("cpu", {}).get("model", "?")
    ax.set_title(f"onnxruntime {data.get('onnxruntime_version')} CPU, {data.get('threads')} thread, batch 1\n{cpu}",
                 fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(data: dict[str, Any]) -> str:
    """The README table (every figure read from the JSON)."""
    cpu = data.get("cpu", {})
    lines = [f"onnxruntime {data.get('onnxruntime_version')} CPU EP, ORT_ENABLE_ALL, {data.get('threads')} thread, "
             f"batch 1, 224×224, {cpu.get('model', '?')} ({', '.join(cpu.get('isa', [])[-3:])}); medians of "
             "interleaved runs (p10–p90 of the per-run ratio in brackets); the exact command of each row is "
             "under `commands.table_rows` in `bench/results/latency.json`.", "",
             "| model | s | MACs | MAC ratio | latency (ms) | speed-up (p10–p90) | runs |",
             "|---|---|---|---|---|---|---|"]
    for r in data.get("rows", []):
        if "skipped" in r:
            lines.append(f"| {r['model']} | | | | | skipped: {r['skipped']} |")
            continue
        if "baseline" in r:
            lines.append(f"| MobileNetV3-Large 1.0 (timm) | – | {r['macs_original'] / 1e6:.0f} M | – | "
                         f"{r['latency_original_ms']:.1f} | – | {r.get('runs', '')} |")
            lines.append(f"| GhostNet 1.0 (ghostify) | – | {r['macs_ghost'] / 1e6:.0f} M | "
                         f"{r['mac_ratio']:.2f}× | {r['latency_ghost_ms']:.1f} | {r['speedup']:.2f}× "
                         f"({r['speedup_p10']:.2f}–{r['speedup_p90']:.2f}) vs MobileNetV3 | {r.get('runs', '')} |")
            continue
        name = r["model"].split(":")[-1]
        if r["s"] == RATIOS[0]:
            lines.append(f"| {name} | original | {r['macs_original'] / 1e9:.2f} G | 1× | "
                         f"{r['latency_original_ms']:.1f} | 1× | |")
        lines.append(f"| {name} | {r['s']} | {r['macs_ghost'] / 1e9:.2f} G | {r['mac_ratio']:.2f}× | "
                     f"{r['latency_ghost_ms']:.1f} | **{r['speedup']:.2f}×** ({r['speedup_p10']:.2f}–"
                     f"{r['speedup_p90']:.2f}) | {r.get('runs', '')} |")
    g = data.get("ghostnet_vs_timm")
    if g and "skipped" not in g:
        lines += ["", f"GhostNet 1.0, ghostify export vs timm `ghostnet_100` via plain `torch.onnx.export`: "
                      f"{g['b']['p50_ms']:.1f} vs {g['a']['p50_ms']:.1f} ms, speed-up {g['speedup']:.2f}× "
                      f"(p10 {g['speedup_p10']:.2f}, p90 {g['speedup_p90']:.2f}; {g.get('runs', '')} interleaved runs, "
                      f"1 thread; `{data.get('commands', {}).get('ghostnet', '')}`)."]
    bar = data.get("bar_resnet50_s2d3")
    if bar:
        lines += ["", "ResNet-50 s=2 d=3, batch 1, both models through `ghostify export` (bar: ≥ 1.85× at 1 thread, "
                      "≥ 1.75× at 2): " + "; ".join(f"`{c}`" for c in bar.get("commands", [])), "",
                  "| threads | `ghostify bench` speed-up (p10–p90) | `bench/ort_harness.py` speed-up (p10–p90) |",
                  "|---|---|---|"]
        for t in (1, 2):
            k = bar.get(f"threads_{t}")
            if k:
                gb, gh = k["ghostify_bench"], k["ort_harness"]
                lines.append(f"| {t} thread{'s' if t > 1 else ''} | {gb['speedup']:.2f}× ({gb['speedup_p10']:.2f}–"
                             f"{gb['speedup_p90']:.2f}) | {gh['speedup']:.2f}× ({gh['speedup_p10']:.2f}–"
                             f"{gh['speedup_p90']:.2f}) |")
    ceil = data.get("ceiling_resnet50_s2d3")
    if ceil:
        n_id = ceil.get("identity_convs_removed")
        dense_ratio = ceil["macs_original"] / (ceil["macs_ghost"] - ceil.get("macs_depthwise_in_ghost", 0))
        lines += ["", f"Ceiling (`{data.get('commands', {}).get('ceiling', '')}`, models interleaved): "
                      f"ResNet-50 vs its deployed s=2 d=3 form, vs that form without its {n_id} identity 1×1 "
                      f"depthwise convolutions (the intrinsic part's residual Add + ReLU), and vs that form with all "
                      f"{ceil['depthwise_convs_removed']} depthwise convolutions cut out of the graph (dense "
                      f"convolutions only). MAC ratio {ceil['macs_original'] / ceil['macs_ghost']:.2f}× for the "
                      f"Ghost model, {dense_ratio:.2f}× for its dense convolutions:", "",
                  "| threads | Ghost model (p10–p90) | without identity passes (p10–p90) | dense convolutions only "
                  "(p10–p90) |", "|---|---|---|---|"]
        for t in (1, 2):
            k = ceil.get(f"threads_{t}")
            if k:
                g, dn = k["speedup_ghost_p10_p90"], k["speedup_dense_only_p10_p90"]
                ni = k.get("speedup_no_identity_p10_p90")
                mid = (f"{k['speedup_no_identity']:.2f}× ({ni[0]:.2f}–{ni[1]:.2f})" if ni else "–")
                lines.append(f"| {t} thread{'s' if t > 1 else ''} | {k['speedup_ghost']:.2f}× ({g[0]:.2f}–{g[1]:.2f}) "
                             f"| {mid} | {k['speedup_dense_only']:.2f}× ({dn[0]:.2f}–{dn[1]:.2f}) |")
        k1 = ceil.get("threads_1")
        if k1 and len(k1["p50_ms"]) == 4:
            base, ghost, dense, no_id = k1["p50_ms"]
            cheap_ms, ident_ms, allowed = no_id - dense, ghost - no_id, base / 1.85 - dense
            gmacs_dense = (ceil["macs_ghost"] - ceil["macs_depthwise_in_ghost"]) / dense / 1e6
            gmacs_cheap = ceil["macs_depthwise_in_ghost"] / cheap_ms / 1e6
            lines += ["", f"Where the time goes (medians at 1 thread, {base:.1f} / {ghost:.1f} / {no_id:.1f} / "
                          f"{dense:.1f} ms for ResNet-50 / Ghost / without identity passes / dense only): "
                          f"the identity passes take {ident_ms:.1f} ms ({ident_ms / ghost:.1%} of the Ghost model), "
                          f"the {ceil['depthwise_convs_removed'] - n_id} cheap 3×3 operations {cheap_ms:.1f} ms "
                          f"({cheap_ms / ghost:.1%}) for {ceil['macs_depthwise_in_ghost'] / 1e6:.1f} M MACs "
                          f"({gmacs_cheap:.1f} GMAC/s, against {gmacs_dense:.1f} GMAC/s for the dense convolutions). "
                          f"The 1.85× bar needs the Ghost model at ≤ {base / 1.85:.1f} ms, which would leave all the "
                          f"depthwise kernels together {allowed:.1f} ms where they take {ghost - dense:.1f} ms."]
    abl = data.get("ablation")
    if abl:
        lines += ["", f"Ablation (`{data.get('commands', {}).get('ablation', '')}`; each group timed interleaved "
                      "with its original, 1 thread; every variant computes the same function):", "",
                  "| model | s | deployment variant | speed-up over the original (p10–p90) |", "|---|---|---|---|"]
        for g in abl:
            for v in g["variants"]:
                lines.append(f"| {g['model'].split(':')[-1]} | {g['s']} | {v['variant']} | {v['speedup']:.2f}× "
                             f"({v['speedup_p10']:.2f}–{v['speedup_p90']:.2f}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--bar-runs", type=int, default=100)
    ap.add_argument("--only", default="table,ghostnet,ceiling,bar,ablation")
    ap.add_argument("--models", default=",".join(TABLE + ["ghostnet"]),
                    help="Table rows to (re)measure; the others are kept from --out.")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "latency.json"))
    ap.add_argument("--plot", default=str(ROOT / "bench" / "results" / "latency.png"))
    ap.add_argument("--workdir", default=None, help="Keep the ONNX files here (default: a temporary directory).")
    ap.add_argument("--markdown", action="store_true", help="Print the README table from --out and exit.")
    args = ap.parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(Path(args.out).read_text())))
        return 0
    stages = [s.strip() for s in args.only.split(",") if s.strip()]
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    out = Path(args.out)
    data: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    import onnxruntime as ort

    data.update({"kind": "latency_table", "cpu": cpu_info(), "onnxruntime_version": ort.__version__,
                 "torch_version": torch.__version__, "ghostify_version": ghostify.__version__,
                 "threads": args.threads, "runs": args.runs, "warmup": args.warmup, "batch": 1,
                 "input_size": list(SIZE)})
    data.setdefault("commands", {})
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *sys.argv[1:]])
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir) if args.workdir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for stage in stages:
            if stage == "table":
                data["rows"] = merge_rows(data.get("rows", []), stage_table(args, work))
                data["commands"].setdefault("table_rows", {})
                for name in args.models:
                    data["commands"]["table_rows"][name] = command
            elif stage == "ghostnet":
                data["ghostnet_vs_timm"] = stage_ghostnet(args, work)
            elif stage == "ceiling":
                data["ceiling_resnet50_s2d3"] = stage_ceiling(args, work)
            elif stage == "bar":
                data["bar_resnet50_s2d3"] = stage_bar(args, work)
            elif stage == "ablation":
                data["ablation"] = stage_ablation(args, work)
            else:
                raise SystemExit(f"unknown stage {stage!r}")
            data["commands"][stage] = command
            data["command"] = command
            out.write_text(json.dumps(data, indent=2) + "\n")
    if "rows" in data:
        plot(data, Path(args.plot))
    print(f"wrote {out}" + (f" and {args.plot}" if "rows" in data else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
