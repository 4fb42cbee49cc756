"""``ghostify paper``: rebuild the paper's weights/FLOPs tables (3-7), print them, write md + JSON."""

from __future__ import annotations

from pathlib import Path

import typer
from rich import box
from rich.table import Table

from ghostify._torch import require_torch
from ghostify.cli.app import app, console, err_console
from ghostify.errors import GhostifyError


def _parse_tables(value: str | None) -> list[str] | None:
    from ghostify.reproduce.paper import TABLE_TITLES

    if not value:
        return None
    tables = [t.strip() for t in value.split(",") if t.strip()]
    bad = [t for t in tables if t not in TABLE_TITLES]
    if bad:
        raise GhostifyError(f"--tables: unknown table(s) {', '.join(bad)} (choose from {', '.join(TABLE_TITLES)})")
    return tables


def _render(result) -> None:
    from ghostify.reproduce.paper import FLOPS_SCALE, TABLE_TITLES, format_figure

    for table in TABLE_TITLES:
        rows = [r for r in result.rows if r.table == table]
        if not rows:
            continue
        unit = rows[0].flops_unit
        t = Table(title=f"{TABLE_TITLES[table]}  (weights in M, FLOPs in {unit}; Δ = ours vs paper)",
                  title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False)
        t.add_column("Model")
        t.add_column("Setting")
        t.add_column("Weights: paper → ours (Δ)", justify="right")
        t.add_column("FLOPs: paper → ours (Δ)", justify="right")
        t.add_column("conv", justify="right")
        for r in rows:
            checks = (r.bar or {}).get("checks", {})
            w = (f"{format_figure(r.paper_weights_m)} → {r.weights / 1e6:.2f} "
                 f"({_pct(r.weights_diff_pct, checks.get('weights'))})")
            f = (f"{format_figure(r.paper_flops)} → {r.flops / FLOPS_SCALE[unit]:.4g} "
                 f"({_pct(r.flops_diff_pct, checks.get('FLOPs'))})")
            t.add_row(r.model, r.setting, w, f, r.converted)
        console.print(t)
        notes = [f"{r.model} {r.setting}: {r.note}" for r in rows if r.note and not r.note.startswith("reference")]
        for n in notes:
            console.print(f"  [dim]note[/] {n}", highlight=False)
    console.print(f"[dim]{result.convention}. Green/red: within/outside the issue's bar for that row.[/]",
                  highlight=False)


def _pct(v: float | None, check: dict | None = None) -> str:
    """A difference in %, green/red when the issue set a bar on it."""
    from ghostify.reproduce.paper import format_diff

    if v is None or check is None:
        return format_diff(v)
    return f"[{'green' if check['ok'] else 'red'}]{format_diff(v)}[/]"


@app.command()
def paper(
    out_dir: Path = typer.Option(Path("docs"), "--out-dir", help="Where paper-tables.md and paper-tables.json go."),
    tables: str | None = typer.Option(None, "--tables", help="Only these tables, e.g. 3,4 (default: 3,4,5,6,7)."),
    json_out: bool = typer.Option(False, "--json", help="Print the JSON to stdout instead of the rich tables."),
    no_write: bool = typer.Option(False, "--no-write", help="Print only; write no files."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing paper-tables.md/.json."),
) -> None:
    """Rebuild the weights/FLOPs rows of the paper's Tables 3-7 with ghostify and compare them to the paper."""
    require_torch("ghostify paper")
    from ghostify.cli.progress import progress_reporter
    from ghostify.reproduce.paper import build_tables
    from ghostify.utils import atomic_write, check_output_dir, check_output_path

    wanted = _parse_tables(tables)
    md_path, json_path = out_dir / "paper-tables.md", out_dir / "paper-tables.json"
    if not no_write:
        check_output_dir(out_dir)
        check_output_path(md_path, overwrite=force, param="out_dir")
        check_output_path(json_path, overwrite=force, param="out_dir")

    with progress_reporter("building") as report:
        result = build_tables(wanted, progress=report)

    if wanted is not None:
        result.command = f"ghostify paper --tables {','.join(wanted)}"
    if json_out:
        console.print_json(result.to_json())
    else:
        _render(result)
    if not no_write:
        atomic_write(md_path, result.to_markdown())
        atomic_write(json_path, result.to_json())
        err_console.print(f"wrote {md_path} and {json_path}")
