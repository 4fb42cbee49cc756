"""Rendering a :class:`Report` in the terminal with rich, at any width, never truncating a figure.

The per-layer table has two layouts. The **wide** one (one line per layer, every column) is
used when all its figures fit the console; only the last column (the form, or why a layer was
kept) wraps. Below that width the **compact** one gives each layer two lines: its name and
shape (c→n, kernel/stride, output size, s,d) on the first, its costs and the form or reason
on the second, which wraps at spaces. Either way every figure is printed whole: rich shrinks
a table that is too wide by cutting cells, so the layout is chosen before rich sees it.

A console that is not a terminal (CI logs, a pipe) and has no ``COLUMNS`` gets
:data:`PIPE_WIDTH` columns, so logs hold the wide table; :func:`report_console` builds it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ghostify.report.counting import CONVENTION
from ghostify.report.report import LayerRow, Report

__all__ = ["render_report", "human", "report_console", "PIPE_WIDTH"]

PIPE_WIDTH = 160
_MIN_REASON = 24  # the wide layout wraps the last column, but not into a sliver
_GAP = 2  # columns between two figures in the compact layout


def human(n: float, unit: str = "", digits: int = 2) -> str:
    """4111512576 -> '4.11 G'."""
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= factor:
            return f"{n / factor:.{digits}f} {suffix}{unit}"
    return f"{n:.0f} {unit}".rstrip()


def report_console(width: int | None = None, stderr: bool = False) -> Console:
    """A console for a report: ``width`` columns if given; a pipe without ``COLUMNS`` gets :data:`PIPE_WIDTH`."""
    console = Console(stderr=stderr, width=width)
    if width is None and not console.is_terminal and not console.is_jupyter and not os.environ.get("COLUMNS"):
        console = Console(stderr=stderr, width=PIPE_WIDTH)
    return console


def _short(n: float) -> str:
    return human(n, digits=1).replace(" ", "")


# where a transfer fit's error was measured (plan.LayerPlan.transfer_fit), in the table's words
_FIT_WORDS = {"calibration": "calibration maps", "synthetic": "synthetic maps", "weights": "weights"}


def _transfer(row: object) -> str:
    err = getattr(row, "transfer_error", None)
    if err is None:
        return ""
    fit = getattr(row, "transfer_fit", None)
    return f" · transfer rel. MSE {err:.3f} ({_FIT_WORDS.get(fit, fit)})"


def _init_line(plan: object) -> str:
    """Which init ran, why, and (for transfer) how well and how fast."""
    line = f"[bold]init[/] {plan.init}" + (f" ({escape(plan.init_reason)})" if plan.init_reason else "")
    info = plan.transfer or {}
    bits = []
    if info.get("output_error") is not None:
        bits.append(f"model output rel. error {info['output_error']:.3f} on the calibration inputs")
    if info.get("seconds") is not None:
        bits.append(f"{info['seconds']:.0f} s")
    return line + (f" · {' · '.join(bits)}" if bits else "")


def _latency_line(plan: object) -> str | None:
    """--latency-aware: the whole model's predicted and measured speed-up side by side."""
    info = getattr(plan, "latency", None)
    if not info:
        return None
    bits = []
    first = info.get("first_try")  # a speed-up budget measured short of its target, then chosen again
    if first:
        bits.append(f"first choice predicted ×{first['predicted_speedup']:.2f}, measured "
                    f"×{first['measured']['speedup']:.2f}: short of the target, chosen again calibrated on it")
    per_layer = info.get("per_layer_measured")  # set when Eq. 4's whole model measured faster
    if info.get("predicted_speedup") is not None:
        bits.append(("per-layer choice " if per_layer else "") + f"predicted ×{info['predicted_speedup']:.2f}"
                    + (f", measured ×{per_layer['speedup']:.2f}" if per_layer else ""))
    measured = info.get("measured") or {}
    if measured.get("speedup") is not None:
        bits.append(("Eq. 4's model, kept: every candidate converted, " if per_layer else "")
                    + f"measured ×{measured['speedup']:.2f} ({measured['original_ms']:.2f} → "
                    f"{measured['ghost_ms']:.2f} ms)")
    eq4 = info.get("eq4_measured")  # timed side by side with the per-layer choice, which was faster
    if eq4 and not per_layer:
        bits.append(f"Eq. 4's model (every candidate converted) measured ×{eq4['speedup']:.2f} beside it")
    if info.get("same_as_eq4"):
        bits.append("every candidate measured faster: Eq. 4's model")
    second = info.get("second_try")
    if second and not second["kept"]:
        bits.append(f"a second choice measured ×{second['measured']['speedup']:.2f}, not faster: the first kept")
    target = info.get("target")
    if target:
        kind, goal = ("speed-up", target["speedup"]) if "speedup" in target else ("MACs", target["macs"])
        got = measured.get("speedup") if kind == "speed-up" else None  # a speed-up target is judged measured
        reached = ("met" if got is None or got >= goal else
                   f"missed: measured ×{got:.2f} against the predicted ×{target['predicted']:.2f}")
        if not target["met"]:
            reached = f"not reachable (best ×{target['predicted']:.2f})"
        bits.append(f"target {kind} ×{goal:g} {reached}")
    bits.append(f"onnxruntime, {info['threads']} thread(s); {info['shapes_measured']} layer shapes timed, "
                f"{info['shapes_cached']} from the cache ({info['table_seconds']:.0f} s)")
    return "[bold]latency-aware[/] " + " · ".join(bits)


def _measured(row: object) -> str:
    latency = getattr(row, "latency", None) or {}
    return f" · measured ×{latency['speedup']:.2f}" if latency.get("speedup") is not None else ""


@dataclass
class _Cells:
    """One layer's figures as text (plain, no markup), shared by both layouts."""

    name: str
    cn: str
    k: str
    hw: str
    sd: str
    r_s: str
    r_c: str
    macs: str
    ratio: str
    params: str
    tail: str  # the form (converted) or "kept: <reason>"
    converted: bool


def _cells(row: LayerRow) -> _Cells:
    stride = str(row.stride[0]) if len(set(row.stride)) == 1 else "×".join(map(str, row.stride))
    k = "×".join(map(str, row.k)) + "/" + stride
    hw = "×".join(map(str, row.out_hw)) if row.out_hw else "-"
    cn = f"{row.c}→{row.n}" + (f" g{row.groups}" if row.groups > 1 else "")
    if not row.converted:
        return _Cells(row.name, cn, k, hw, "", "", "", _short(row.macs_before), "", _short(row.params_before),
                      f"kept: {row.reason}", False)
    ratio = row.macs_before / row.macs_after if row.macs_after else float("nan")
    tail = f"{row.form}{' · ' + row.note if row.note else ''}{_measured(row)}{_transfer(row)}"
    return _Cells(row.name, cn, k, hw, f"{row.s},{row.d}", f"{row.r_s:.2f}", f"{row.r_c:.2f}",
                  f"{_short(row.macs_before)}→{_short(row.macs_after)}", f"{ratio:.2f}",
                  f"{_short(row.params_before)}→{_short(row.params_after)}", tail, True)


def _size_header(rows: Sequence[LayerRow]) -> str:
    """The output-size column's name for the layers' dimensionality: L', h'×w' or t'×h'×w'."""
    dims = {len(r.out_hw) for r in rows if r.out_hw}
    return {1: "L'", 3: "t'×h'×w'"}.get(dims.pop(), "h'×w'") if len(dims) == 1 else "out size"


_WIDE = (("layer", "left", "name"), ("c→n", "right", "cn"), ("k/str", "right", "k"), ("", "right", "hw"),
         ("s,d", "right", "sd"), ("r_s Eq4", "right", "r_s"), ("r_c Eq5", "right", "r_c"),
         ("MACs", "right", "macs"), ("×meas", "right", "ratio"), ("params", "right", "params"))


def _wide_width(cells: Sequence[_Cells], size_header: str) -> int:
    """Columns the wide table needs with no figure cut (rich pads each column by one on either side)."""
    total = 0
    for header, _, attr in _WIDE:
        total += max([len(header or size_header)] + [len(getattr(c, attr)) for c in cells]) + 2
    return total + _MIN_REASON


def _render_wide(cells: Sequence[_Cells], title: str, size_header: str, console: Console) -> None:
    table = Table(title=title, header_style="bold", pad_edge=False, box=None)
    for header, just, _ in _WIDE:
        table.add_column(header or size_header, justify=just, no_wrap=True)
    table.add_column("", justify="left", overflow="fold")
    for c in cells:
        figures = [escape(getattr(c, attr)) for _, _, attr in _WIDE]
        if c.converted:
            table.add_row(*figures, f"[dim]{escape(c.tail)}[/]")
        else:
            figures[0], figures[7], figures[9] = (f"[dim]{f}[/]" for f in (figures[0], figures[7], figures[9]))
            table.add_row(*figures, f"[yellow]{escape(c.tail)}[/]")
    console.print(table)


def _render_compact(cells: Sequence[_Cells], title: str, size_header: str, console: Console) -> None:
    """Two lines a layer: name and shape, then costs and the form or reason (wrapped at spaces)."""
    cols = [("c→n", "cn"), ("k/str", "k"), (size_header, "hw"), ("s,d", "sd")]
    widths = [max([len(h)] + [len(getattr(c, a)) for c in cells]) for h, a in cols]
    shape_width = sum(widths) + _GAP * len(widths)
    name_width = max(len("layer"), min(max(len(c.name) for c in cells), console.width - shape_width))

    def first_line(name: str, figures: Sequence[str]) -> str:
        return name.ljust(name_width) + "".join(" " * _GAP + f.rjust(w) for f, w in zip(figures, widths,
                                                                                          strict=True))

    console.print(title, justify="center", style="italic", overflow="fold")
    console.print(first_line("layer", [h for h, _ in cols]), style="bold", overflow="fold")
    console.print("    r_s Eq4 / r_c Eq5 · MACs ×meas · params · form, or why it is kept", style="bold",
                  overflow="fold")
    for c in cells:
        figures = [getattr(c, a) for _, a in cols]
        if len(c.name) > name_width:  # a name longer than the room left: alone on its line
            console.print(escape(c.name), overflow="fold", highlight=False)
            console.print(escape(first_line("", figures)), highlight=False)
        else:
            console.print(escape(first_line(c.name, figures)), highlight=False, style=None if c.converted else "dim")
        if c.converted:
            second = f"    {c.r_s} / {c.r_c} · {c.macs} ×{c.ratio} · {c.params} · [dim]{escape(c.tail)}[/]"
        else:
            second = f"    [dim]{c.macs} · {c.params}[/] · [yellow]{escape(c.tail)}[/]"
        console.print(second, highlight=False, overflow="fold")


def render_report(report: Report, console: Console | None = None, layers: bool = True) -> None:
    """The per-layer table (wide or compact, whichever fits ``console``) and the totals."""
    console = console or report_console()
    if layers and report.layers:
        cells = [_cells(row) for row in report.layers]
        title = f"ghostify: {report.model}  input {'x'.join(map(str, report.input_size))}"
        size_header = _size_header(report.layers)
        if _wide_width(cells, size_header) <= console.width:
            _render_wide(cells, title, size_header, console)
        else:
            _render_compact(cells, title, size_header, console)
    t = report.totals
    console.print(
        f"[bold]params[/] {human(t['params_before'])} → {human(t['params_after'])} "
        f"(×{t['measured_compression']:.2f})   "
        f"[bold]MACs[/] {human(t['macs_before'])} → {human(t['macs_after'])}   "
        f"[bold]speed-up[/] Eq. 4 ×{t['theoretical_speedup']:.2f} · measured ×{t['measured_speedup']:.2f}   "
        f"[bold]converted[/] {t['layers_converted']}/{t['layers_total']} convolutions"
    )
    weights = f"; weights: {report.weights}" if report.weights else "; weights: random init"
    console.print(f"[dim]{CONVENTION}; counted with {report.counter}; graph rewrite: {report.plan.mode}"
                  f"{escape(weights)}[/]")
    console.print(_init_line(report.plan), highlight=False)
    latency = _latency_line(report.plan)
    if latency is not None:
        console.print(latency, highlight=False)
    for lost in report.plan.lost_optimizations:
        console.print(f"[yellow]note:[/] {escape(lost)}")
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/] {escape(warning)}")
