"""Rendering a :class:`Report` in the terminal with rich."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from ghostify.report.counting import CONVENTION
from ghostify.report.report import Report

__all__ = ["render_report", "human"]


def human(n: float, unit: str = "", digits: int = 2) -> str:
    """4111512576 -> '4.11 G'."""
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= factor:
            return f"{n / factor:.{digits}f} {suffix}{unit}"
    return f"{n:.0f} {unit}".rstrip()


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
    line = f"[bold]init[/] {plan.init}" + (f" ({plan.init_reason})" if plan.init_reason else "")
    info = plan.transfer or {}
    bits = []
    if info.get("output_error") is not None:
        bits.append(f"model output rel. error {info['output_error']:.3f} on the calibration inputs")
    if info.get("seconds") is not None:
        bits.append(f"{info['seconds']:.0f} s")
    return line + (f" · {' · '.join(bits)}" if bits else "")


def render_report(report: Report, console: Console | None = None, layers: bool = True) -> None:
    console = console or Console()
    if layers:
        table = Table(title=f"ghostify: {report.model}  input {'x'.join(map(str, report.input_size))}",
                      header_style="bold", pad_edge=False, box=None)
        for col, just in (("layer", "left"), ("c→n", "right"), ("k/str", "right"), ("h'×w'", "right"),
                          ("s,d", "right"), ("r_s Eq4", "right"), ("r_c Eq5", "right"),
                          ("MACs", "right"), ("×meas", "right"), ("params", "right"), ("", "left")):
            table.add_column(col, justify=just, no_wrap=col != "", overflow="fold")
        for row in report.layers:
            hw = "×".join(map(str, row.out_hw)) if row.out_hw else "-"
            k = "×".join(map(str, row.k)) + "/" + (
                str(row.stride[0]) if row.stride[0] == row.stride[1] else "×".join(map(str, row.stride)))
            cn = f"{row.c}→{row.n}" + (f" g{row.groups}" if row.groups > 1 else "")
            if row.converted:
                ratio = row.macs_before / row.macs_after if row.macs_after else float("nan")
                table.add_row(
                    row.name, cn, k, hw, f"{row.s},{row.d}", f"{row.r_s:.2f}", f"{row.r_c:.2f}",
                    f"{_short(row.macs_before)}→{_short(row.macs_after)}", f"{ratio:.2f}",
                    f"{_short(row.params_before)}→{_short(row.params_after)}",
                    f"[dim]{row.form}{' · ' + row.note if row.note else ''}{_transfer(row)}[/]",
                )
            else:
                table.add_row(f"[dim]{row.name}[/]", cn, k, hw, "", "", "", f"[dim]{_short(row.macs_before)}[/]",
                              "", f"[dim]{_short(row.params_before)}[/]", f"[yellow]kept: {row.reason}[/]")
        console.print(table)
    t = report.totals
    console.print(
        f"[bold]params[/] {human(t['params_before'])} → {human(t['params_after'])} "
        f"(×{t['measured_compression']:.2f})   "
        f"[bold]MACs[/] {human(t['macs_before'])} → {human(t['macs_after'])}   "
        f"[bold]speed-up[/] Eq. 4 ×{t['theoretical_speedup']:.2f} · measured ×{t['measured_speedup']:.2f}   "
        f"[bold]converted[/] {t['layers_converted']}/{t['layers_total']} convolutions"
    )
    console.print(f"[dim]{CONVENTION}; counted with {report.counter}; graph rewrite: {report.plan.mode}[/]")
    console.print(_init_line(report.plan), highlight=False)
    for lost in report.plan.lost_optimizations:
        console.print(f"[yellow]note:[/] {lost}")
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/] {warning}")
