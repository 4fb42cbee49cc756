"""Progress on long work: a rich bar in a terminal, plain lines in a CI log.

The library reports progress through plain callbacks (``progress(done, total, text)``); the CLI
turns them into a live bar when stderr is a terminal, and otherwise into one line every few
steps, so that a log shows the work moving and nothing is redrawn or truncated.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ghostify.cli.app import err_console

__all__ = ["progress_reporter", "Reporter"]

Reporter = Callable[[int, int, str], None]  # (done, total, what is happening now)


@contextlib.contextmanager
def progress_reporter(label: str, *, lines: int = 10, min_interval_s: float = 5.0,
                      force_plain: bool = False) -> Iterator[Reporter]:
    """A reporter for ``label``: live bar on a terminal, else about ``lines`` plain lines in all
    (and at most one every ``min_interval_s`` seconds, the first and the last always)."""
    if err_console.is_terminal and not force_plain:
        columns = (TextColumn(f"{label}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                   TimeElapsedColumn(), TimeRemainingColumn())
        with Progress(*columns, console=err_console, transient=True) as bar:
            task = bar.add_task("", total=None)

            def live(done: int, total: int, text: str) -> None:
                bar.update(task, completed=done, total=total, description=text)

            yield live
        return
    state = {"last": -1, "time": 0.0, "start": time.monotonic()}

    def plain(done: int, total: int, text: str) -> None:
        step = max(1, total // max(1, lines)) if total else 1
        now = time.monotonic()
        due = done in (1, total) or (done - state["last"] >= step and now - state["time"] >= min_interval_s)
        if not due or done == state["last"]:
            return
        state["last"], state["time"] = done, now
        elapsed = now - state["start"]
        err_console.print(f"{label}: {done}/{total} {text} ({elapsed:.0f} s)", highlight=False, soft_wrap=True)

    yield plain
