"""Tables, bars and the Pareto plot of ``bench/vs_pruning.py`` from its JSON (no timing, no training).

The Fashion-MNIST bar compares at equal measured latency: each criterion's pruned models (and the
unpruned baseline, pruning ratio 0) form an accuracy-against-latency Pareto front (see
``_at_latency``); the Ghost model at s is compared with the best criterion's front at the Ghost
model's measured latency.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

METRICS = ("zero_shot", "after_200_steps", "after_1_epoch")
LABELS = {"zero_shot": "zero-shot", "after_200_steps": "200 KD steps", "after_1_epoch": "1 KD epoch"}
MID_SCHEDULE = "epoch_run_at_step_200"  # the epoch run's test at step 200, near its peak LR: not a budget


def _stats(values: list[float]) -> dict[str, float]:
    return {"mean": float(np.mean(values)), "min": float(np.min(values)), "max": float(np.max(values)),
            "std": float(np.std(values)), "n": len(values)}


def latency_sections(fm: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The latency sections by name: ``""`` the CPU the accuracy runs were made with, then any other CPU's."""
    return {"": fm.get("latency", {}), **fm.get("latency_on", {})}


def fmnist_summary(fm: dict[str, Any], section: str = "") -> dict[str, dict[str, Any]]:
    """Per variant (``ghost-s2``, ``magnitude-s2``, ...): latency row, and mean/min/max over seeds per metric.

    On another CPU's section (``section`` named) a latency-aware model has no latency: that CPU would
    choose its own layers, and only the first CPU's choice was trained.
    """
    lat = latency_sections(fm).get(section, {}).get("rows", {})
    out = {}
    for variant, seeds in sorted(fm.get("accuracy", {}).items()):
        rows = list(seeds.values())
        method, s, r = rows[0]["method"], rows[0]["s"], rows[0].get("round_to")
        ghost = method.startswith("ghost") or method == "unpruned"
        key = rows[0].get("latency_row") or (
            "original" if method == "unpruned" else f"{method}-s{s}" if ghost else f"pruned@ghost-s{s}-r{r}")
        row = {} if section and method == "ghost-lat" else lat.get(key, {})
        entry: dict[str, Any] = {"method": method if ghost else f"{method}-r{r}", "s": int(s),
                                 "latency_row": key, **{
            k: row.get(k) for k in ("latency_ms", "speedup", "macs", "mac_reduction", "params")}}
        for m in (*METRICS, "zero_shot_as_is", MID_SCHEDULE):
            vals = [r[m] for r in rows if r.get(m) is not None]
            if vals:
                entry[m] = _stats(vals)
        entry["seeds"] = sorted(int(k) for k in seeds)
        out[variant] = entry
    return out


def _at_latency(pruned: list[tuple[float, float]], base: tuple[float, float] | None,
                x: float) -> tuple[float, str]:
    """The pruning curve's accuracy at latency ``x``, and where ``x`` lies on it.

    The curve is the Pareto front of the pruned models and the baseline (each point more accurate
    than every faster one), linear between its points: the best accuracy pruning offers at that
    latency. Slower than its last point: that point's accuracy. Faster than every model: the fastest
    pruned model's accuracy (it is slower than the Ghost model: a Ghost model at least as accurate
    dominates it).
    """
    pts = sorted(pruned + ([base] if base else []))
    front: list[tuple[float, float]] = []
    for p in pts:
        if not front or p[1] > front[-1][1]:
            front.append(p)
    if x < pts[0][0]:
        fastest = min(pruned)
        return fastest[1], f"faster than every pruned model (fastest {fastest[0] * 1e3:.1f} µs)"
    if x >= front[-1][0]:
        if base and front[-1] == base:
            return base[1], "the baseline: faster and more accurate"
        return front[-1][1], f"the pruned model at {front[-1][0] * 1e3:.1f} µs: faster and more accurate"
    return float(np.interp(x, [p[0] for p in front], [p[1] for p in front])), "interpolated"


def fmnist_bars(fm: dict[str, Any], summary: dict[str, dict[str, Any]], section: str = "") -> dict[str, Any]:
    """Ghost vs the best criterion's accuracy at the Ghost model's measured latency, per s and metric."""
    base_lat = latency_sections(fm).get(section, {}).get("rows", {}).get("original", {}).get("latency_ms")
    base_acc = fm.get("baseline", {}).get("test_acc")
    ghosts = {v: e for v, e in summary.items() if e["method"].startswith("ghost") and e["latency_ms"] is not None}
    criteria = sorted({e["method"] for e in summary.values()
                       if not e["method"].startswith("ghost") and e["method"] != "unpruned"})
    unpruned = summary.get("unpruned", {})
    rows, met = [], True
    for gname, g in sorted(ghosts.items()):
        for m in METRICS:
            if m not in g:
                continue
            best = None
            for c in criteria:
                pts = [(e["latency_ms"], e[m]["mean"]) for e in summary.values()
                       if e["method"] == c and m in e and e["latency_ms"] is not None]
                if not pts:
                    continue
                acc0 = unpruned[m]["mean"] if m in unpruned else base_acc  # the baseline through the same budget
                base = (base_lat, acc0) if base_lat is not None and acc0 is not None else None
                acc, where = _at_latency(pts, base, g["latency_ms"])
                if best is None or acc > best[1]:
                    best = ("unpruned" if where.startswith("the baseline") else c, acc, where)
            if best is None:
                continue
            ok = g[m]["mean"] >= best[1]
            met &= ok
            rows.append({"ghost": gname, "metric": m, "ghost_latency_ms": g["latency_ms"], "ghost_acc": g[m]["mean"],
                         "best_criterion": best[0], "pruned_acc_at_latency": best[1], "where": best[2],
                         "ghost_ge_pruned": ok})
    by_ghost = {g: all(r["ghost_ge_pruned"] for r in rows if r["ghost"] == g)
                for g in sorted({r["ghost"] for r in rows})}
    return {"rows": rows, "met": met and bool(rows), "met_by_ghost_model": by_ghost}


def _pm(e: dict[str, Any] | None) -> str:
    if not e:
        return "–"
    seeds = "" if e["n"] >= 3 else f", {e['n']} seed{'s' if e['n'] > 1 else ''}"
    return f"{e['mean']:.2f} ({e['min']:.2f}–{e['max']:.2f}{seeds})" if e["n"] > 1 else f"{e['mean']:.2f}{seeds}"


def latency_table(lat: dict[str, Any]) -> list[str]:
    lines = ["| model | variant | MACs | ×MACs | params | latency ms | speed-up |", "|---|---|---|---|---|---|---|"]
    for model, sec in lat.items():
        if not isinstance(sec, dict) or "rows" not in sec:
            continue
        for name, r in sec["rows"].items():
            label = name if r["variant"] != "pruned" else (
                f"pruned r{r['round_to']} (ratio {r['pruning_ratio']:.3f}) @ {r['matches']}")
            lines.append(f"| {model} | {label} | {r['macs'] / 1e9:.3f} G | {r['mac_reduction']:.2f} | "
                         f"{r['params'] / 1e6:.2f} M | {r['latency_ms']:.2f} | {r['speedup']:.2f}× |")
    return lines


def head_to_head(lat: dict[str, Any]) -> list[str]:
    """One line per model and s: the Ghost model beside the pruned ones at its MACs (×MACs, speed-up)."""
    lines = ["| model | s | ghost ×MACs → speed-up | pruned r8 ×MACs → speed-up | pruned r16 ×MACs → speed-up | CPU |",
             "|---|---|---|---|---|---|"]
    for model, sec in lat.items():
        rows = sec.get("rows", {}) if isinstance(sec, dict) else {}
        for gname, g in rows.items():
            if not g["variant"].startswith("ghost"):
                continue
            cells = [f"{g['mac_reduction']:.2f} → **{g['speedup']:.2f}×**"]
            for r in (8, 16):
                pr = rows.get(f"pruned@{gname}-r{r}")
                cells.append(f"{pr['mac_reduction']:.2f} → {pr['speedup']:.2f}×" if pr else "–")
            cells.append(sec.get("cpu", {}).get("model", "?"))  # rows of one model share one run, one CPU
            lines.append(f"| {model} | {gname.removeprefix('ghost-')} | " + " | ".join(cells) + " |")
    return lines


def fmnist_table(fm: dict[str, Any], summary: dict[str, dict[str, Any]], section: str = "") -> list[str]:
    b = fm.get("baseline", {})
    base_lat = latency_sections(fm).get(section, {}).get("rows", {}).get("original", {})
    lines = ["| variant | MACs (×) | params | latency µs (speed-up) | zero-shot | as-is (no BN re-est.) | "
             "200 KD steps | 1 KD epoch | epoch run at step 200 |", "|---|---|---|---|---|---|---|---|---|"]
    if b:
        lat = f"{base_lat['latency_ms'] * 1e3:.1f}" if base_lat else "–"
        lines.append(f"| baseline | {b['macs'] / 1e6:.2f} M | {b['params'] / 1e3:.1f} K | {lat} | {b['test_acc']:.2f} "
                     "| | | | |")
    for variant, e in sorted(summary.items(), key=lambda kv: (kv[1]["s"], not kv[0].startswith("ghost"), kv[0])):
        mac = f"{e['macs'] / 1e6:.2f} M ({e['mac_reduction']:.2f})" if e["macs"] else "–"
        lat = f"{e['latency_ms'] * 1e3:.1f} ({e['speedup']:.2f}×)" if e["latency_ms"] else "–"
        par = f"{e['params'] / 1e3:.1f} K" if e["params"] else "–"
        lines.append(f"| {variant} | {mac} | {par} | {lat} | {_pm(e.get('zero_shot'))} | "
                     f"{_pm(e.get('zero_shot_as_is'))} | {_pm(e.get('after_200_steps'))} | "
                     f"{_pm(e.get('after_1_epoch'))} | {_pm(e.get(MID_SCHEDULE))} |")
    return lines


def bars_table(bars: dict[str, Any]) -> list[str]:
    lines = ["| ghost | budget | latency µs | ghost acc | best pruned at that latency | ≥ |",
             "|---|---|---|---|---|---|"]
    for r in bars["rows"]:
        note = "" if r["where"] == "interpolated" else f"; {r['where']}"
        lines.append(f"| {r['ghost']} | {LABELS[r['metric']]} | {r['ghost_latency_ms'] * 1e3:.1f} | "
                     f"{r['ghost_acc']:.2f} | {r['pruned_acc_at_latency']:.2f} ({r['best_criterion']}{note}) | "
                     f"{'yes' if r['ghost_ge_pruned'] else 'no'} |")
    return lines


def plot(fm: dict[str, Any], summary: dict[str, dict[str, Any]], path: Path, section: str = "") -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no plot (pip install 'ghostify[plot]')"
    fig, axes = plt.subplots(1, len(METRICS), figsize=(15, 4.5), sharex=True)
    base, base_lat = fm.get("baseline", {}), latency_sections(fm).get(section, {}).get("rows", {}).get("original", {})
    for ax, m in zip(axes, METRICS, strict=True):
        for method in sorted({e["method"] for e in summary.values()}):
            es = sorted((e for e in summary.values() if e["method"] == method and m in e and e["latency_ms"]),
                        key=lambda e: e["latency_ms"])
            if not es:
                continue
            x = [e["latency_ms"] * 1e3 for e in es]
            y = [e[m]["mean"] for e in es]
            # max(0, ...): the mean of equal values can round a hair past them
            err = [[max(0.0, e[m]["mean"] - e[m]["min"]) for e in es],
                   [max(0.0, e[m]["max"] - e[m]["mean"]) for e in es]]
            label = {"ghost": "ghostify (transfer)", "ghost-lat": "ghostify latency-aware (transfer)",
                     "unpruned": "baseline, same distillation"}.get(
                method, f"Torch-Pruning {method}")
            ax.errorbar(x, y, yerr=err, marker="*" if method.startswith("ghost") else "o", capsize=3, label=label)
            for e, xi, yi in zip(es, x, y, strict=True):
                tag = f"s={e['s']}" if e["s"] else e["latency_row"].split("@")[-1]  # an extra: its ratio
                if e["method"] != "unpruned":
                    ax.annotate(tag, (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7)
        if base and base_lat:
            ax.plot([base_lat["latency_ms"] * 1e3], [base["test_acc"]], "ks", label="baseline")
        ax.set_title(f"Fashion-MNIST, {LABELS[m]}" + (f" (latency: {section})" if section else ""))
        ax.set_xlabel("onnxruntime latency, 1 thread, batch 1 (µs)")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"wrote {path}"


def fmnist_lines(fm: dict[str, Any], summary: dict[str, dict[str, Any]], bars: dict[str, Any],
                 section: str = "") -> list[str]:
    """The Fashion-MNIST table and its bar, with the latencies of one CPU's section."""
    sec = latency_sections(fm).get(section, {})
    cpu = sec.get("cpu", {})
    head = f"## Fashion-MNIST CNN{f', latency on a second CPU ({section})' if section else ''}"
    bar_head = f"## bar: equal measured latency{f' ({section})' if section else ''}"
    note = [] if not section else [
        "The accuracies are the runs above; only the latencies are this CPU's. The pruned and Ghost "
        "architectures do not depend on the CPU; the latency-aware ones do, so they have no row here.", ""]
    return [head, "", f"latency on {cpu.get('model', '?')} ({', '.join(cpu.get('isa', []))})", "", *note,
            *fmnist_table(fm, summary, section), "", bar_head, "", *bars_table(bars), "",
            f"bar met (every row): {bars['met']}", "",
            "met per Ghost model (every budget): " + ", ".join(
                f"{g} {'yes' if ok else 'no'}" for g, ok in bars.get("met_by_ghost_model", {}).items()), ""]


def report(data: dict[str, Any], args: argparse.Namespace) -> None:
    fm = data.get("fmnist", {})
    summary = fmnist_summary(fm)
    bars = fmnist_bars(fm, summary)
    fm["summary"], fm["bars"] = summary, bars
    lines = []
    if data.get("latency"):  # a Fashion-MNIST-only file (vs_pruning_full.json) has none: no empty tables
        lines += ["## 224×224 models: latency at equal MACs", "", *head_to_head(data["latency"]), "",
                  *latency_table(data["latency"]), ""]
    if data.get("latency_aware"):
        la = data["latency_aware"]
        lines += ["## latency-aware policy", "", la.get("note", ""), *head_to_head(la), "", *latency_table(la), ""]
    lines += fmnist_lines(fm, summary, bars)
    out = Path(args.out)
    plots = [plot(fm, summary, out.with_suffix(".png")) if summary else "no Fashion-MNIST results yet: no plot"]
    for name in fm.get("latency_on", {}):
        other = fmnist_summary(fm, name)
        fm.setdefault("bars_on", {})[name] = other_bars = fmnist_bars(fm, other, name)
        lines += fmnist_lines(fm, other, other_bars, name)
        if other:
            plots.append(plot(fm, other, out.with_name(f"{out.stem}_latency_{name}.png"), name))
    text = "\n".join(lines).rstrip()
    print(text)
    out.with_suffix(".md").write_text(text + "\n")
    print("\n".join(plots))
