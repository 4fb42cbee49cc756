"""Reproductions of the paper: its weights/FLOPs tables (3-7) rebuilt with the generic pass."""

from ghostify.reproduce.paper import COMMAND, TABLE_TITLES, PaperRow, PaperTables, build_tables, row_specs

__all__ = ["build_tables", "row_specs", "PaperRow", "PaperTables", "TABLE_TITLES", "COMMAND"]
