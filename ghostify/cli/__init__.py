"""The command-line shell: it parses, calls the library, renders with rich.

Each command lives in its own module and registers itself on the shared typer ``app``.
"""

from ghostify.cli import convert as _convert  # noqa: F401  (registers convert, analyze)
from ghostify.cli.app import app, main

__all__ = ["app", "main"]
