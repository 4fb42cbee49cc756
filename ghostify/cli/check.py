"""``ghostify check``: exit 0 when every gate holds, 1 when one fails, 2 for a bad report."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ghostify.cli.app import app, console, error
from ghostify.cli.errors import flag_for


@app.command()
def check(
    reports: list[Path] = typer.Argument(..., help="REPORT.json of convert / bench, finetune --metrics, or .ghost "
                                                   "(several: figures are merged, later files win)."),
    min_macs_reduction: float | None = typer.Option(None, "--min-macs-reduction",
                                                    help="Needs macs_before / macs_after >= X (e.g. 1.8)."),
    min_params_reduction: float | None = typer.Option(None, "--min-params-reduction",
                                                      help="Needs params_before / params_after >= X."),
    max_latency_ratio: float | None = typer.Option(None, "--max-latency-ratio",
                                                   help="Needs latency_after / latency_before <= X (bench)."),
    max_accuracy_drop: float | None = typer.Option(None, "--max-accuracy-drop",
                                                   help="Needs teacher_acc - student_acc <= X percentage points."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No table; failures still go to stderr."),
) -> int:
    """Gate a conversion in CI: exit 0 if all gates hold, 1 if one fails, 2 for a bad report or usage."""
    from ghostify.gates import run_gates

    results = run_gates(reports, {"macs_reduction": min_macs_reduction, "params_reduction": min_params_reduction,
                                  "latency_ratio": max_latency_ratio, "accuracy_drop": max_accuracy_drop})
    if not quiet:
        table = Table(title="ghostify check", header_style="bold", box=None)
        for col, justify in (("gate", "left"), ("figure", "right"), ("threshold", "right"), ("", "left"),
                             ("from", "left")):
            table.add_column(col, justify=justify)  # type: ignore[arg-type]
        for r in results:
            op = ">=" if r.gate.minimum else "<="
            unit = "×" if r.gate.unit == "x" else " pp"
            table.add_row(r.gate.label, f"{r.value:.4g}{unit}", f"{op} {r.threshold:.4g}{unit}",
                          "[green]ok[/]" if r.passed else "[bold red]FAILED[/]", r.source)
        console.print(table)
    failed = [r for r in results if not r.passed]
    for r in failed:  # one line each on stderr, so CI logs show why without the table
        error(f"gate failed: {r.describe(flag_for(r.gate.key))}")
    return 1 if failed else 0
