"""The command-line shell: it parses, calls the library, renders with rich.

Each command lives in its own module and registers itself on the shared typer ``app``.
"""

from ghostify.cli import check as _check  # noqa: F401
from ghostify.cli import convert as _convert  # noqa: F401  (registers convert, analyze)
from ghostify.cli import export as _export  # noqa: F401  (registers export, bench)
from ghostify.cli import finetune as _finetune  # noqa: F401
from ghostify.cli import paper as _paper  # noqa: F401
from ghostify.cli.app import app, main

__all__ = ["app", "main"]
