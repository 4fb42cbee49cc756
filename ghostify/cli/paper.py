"""``ghostify paper``: rebuild the paper's weights/FLOPs tables (3-7), print them, write md + JSON."""

from __future__ import annotations

from pathlib import Path

import typer
from rich import box
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

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
    from ghostify.reproduce.paper import _SCALE, TABLE_TITLES

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
            w = f"{_num(r.paper_weights_m)} → {r.weights / 1e6:.2f} ({_pct(r.weights_diff_pct, checks.get('weights'))})"
            f = (f"{_num(r.paper_flops)} → {r.flops / _SCALE[unit]:.4g} "
                 f"({_pct(r.flops_diff_pct, checks.get('FLOPs'))})")
            t.add_row(r.model, r.setting, w, f, r.converted)
        console.print(t)
        notes = [f"{r.model} {r.setting}: {r.note}" for r in rows if r.note and not r.note.startswith("reference")]
        for n in notes:
            console.print(f"  [dim]note[/] {n}", highlight=False)
    console.print(f"[dim]{result.convention}. Green/red: within/outside the issue's bar for that row.[/]",
                  highlight=False)


def _num(v: float | None) -> str:
    return "–" if v is None else f"{v:g}"


def _pct(v: float | None, check: dict | None = None) -> str:
    """A difference in %, green/red when the issue set a bar on it."""
    if v is None:
        return "–"
    if check is None:
        return f"{v:+.1f}%"
    return f"[{'green' if check['ok'] else 'red'}]{v:+.1f}%[/]"


@app.command()
def paper(
    out_dir: Path = typer.Option(Path("docs"), "--out-dir", help="Where paper-tables.md and paper-tables.json go."),
    tables: str | None = typer.Option(None, "--tables", help="Only these tables, e.g. 3,4 (default: 3,4,5,6,7)."),
    json_out: bool = typer.Option(False, "--json", help="Print the JSON to stdout instead of the rich tables."),
    no_write: bool = typer.Option(False, "--no-write", help="Print only; write no files."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing paper-tables.md/.json."),
) -> None:
    """Rebuild the weights/FLOPs rows of the paper's Tables 3-7 with ghostify and compare them to the paper."""
    from ghostify.reproduce.paper import build_tables, row_specs
    from ghostify.utils import atomic_write, check_output_path

    wanted = _parse_tables(tables)
    md_path, json_path = out_dir / "paper-tables.md", out_dir / "paper-tables.json"
    if not no_write:
        if not out_dir.is_dir():
            raise GhostifyError(f"{out_dir}: output directory does not exist")
        check_output_path(md_path, overwrite=force, param="out_dir")
        check_output_path(json_path, overwrite=force, param="out_dir")

    total = sum(1 for s in row_specs() if wanted is None or s.table in wanted)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console, transient=True) as bar:
        task = bar.add_task("building", total=total)
        seen = {"n": 0}

        def step(label: str) -> None:
            if seen["n"]:
                bar.advance(task)
            seen["n"] += 1
            bar.update(task, description=label)

        result = build_tables(wanted, progress=step)
        bar.advance(task)

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
