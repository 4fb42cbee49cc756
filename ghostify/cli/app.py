"""The typer app and the one place that turns errors into exit codes.

Exit codes: 0 success; 1 a gate or parity check failed (``check``, ``export``); 2 bad input
(one line on stderr, no traceback unless ``--debug``); 130 interrupted.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from ghostify.cli.errors import BAD_INPUT, INTERNAL, INTERRUPTED, cli_message
from ghostify.errors import GhostifyError, NeedsTorchError

try:  # recent typer vendors click (typer._click); older typer uses click itself
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover - depends on the installed typer
    from click.exceptions import ClickException
try:
    from typer.exceptions import Abort, Exit
except ImportError:  # pragma: no cover
    from click.exceptions import Abort, Exit

app = typer.Typer(
    name="ghostify",
    help="Turn the convolutions of a PyTorch CNN into Ghost modules (GhostNet, CVPR 2020).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="rich",
)

# Tables and figures go to stdout; progress and errors to stderr, so `--json -` style piping works.
console = Console()
err_console = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        from ghostify import __version__

        console.print(f"ghostify {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors."),
    version: bool | None = typer.Option(None, "--version", callback=_version, is_eager=True,
                                           help="Print the version and exit."),
) -> None:
    """ghostify: convert, analyze, export, benchmark and gate Ghost models."""


def write_json(path: Path, data: str | dict[str, Any]) -> None:
    """A report as JSON: to stdout for ``-``, else atomically to ``path``."""
    from ghostify.utils import atomic_write

    text = data if isinstance(data, str) else json.dumps(data, indent=2, default=str)
    if str(path) == "-":
        console.print_json(text)
    else:
        atomic_write(path, text + "\n")


def error(message: str) -> None:
    """One line on stderr."""
    sys.stderr.write(f"ghostify: error: {message}\n")
    sys.stderr.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point; returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    try:
        result = app(args=args, prog_name="ghostify", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except GhostifyError as exc:
        if debug:
            raise
        error(cli_message(exc))
        return BAD_INPUT
    except Exit as exc:
        return exc.exit_code
    except Abort:
        error("aborted")
        return INTERRUPTED
    except ClickException as exc:
        if debug:
            raise
        ctx = getattr(exc, "ctx", None)
        where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        message = exc.format_message().replace("\n", " ").strip() or "no command given"  # bare `ghostify`
        error(message + where)
        return BAD_INPUT
    except KeyboardInterrupt:
        error("interrupted; no output is left half-written (finetune: --resume continues from its checkpoint)")
        return INTERRUPTED
    except Exception as exc:  # a bug in ghostify or in the user's model code
        if debug:
            raise
        if _torch_missing(exc):  # a path to torch that no require_torch guards: still one line, exit 2
            error(cli_message(NeedsTorchError(f"this command needs PyTorch, which cannot be imported here ({exc})")))
            return BAD_INPUT
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        error(f"unexpected {type(exc).__name__}: {text[:300]} (rerun with --debug for the traceback)")
        return INTERNAL


def _torch_missing(exc: BaseException) -> bool:
    """``exc`` is torch (or torchvision, which needs it) failing to import, e.g. on an onnxruntime-only board."""
    return isinstance(exc, ImportError) and (exc.name or "").split(".")[0] in ("torch", "torchvision")
