"""Progress bars (rich) and the console; silent when quiet."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

console = Console(stderr=True)


LOG_EVERY = 5.0  # seconds: without a terminal, a plain progress line at most this often (and at the last step)


@contextlib.contextmanager
def progress_bar(desc: str, total: int, quiet: bool = False, unit: str = "epoch") -> Iterator[Callable[[str], None]]:
    """Yield ``advance(status)``; one call per unit of work (an epoch).

    On a terminal: a rich progress bar. Redirected to a file or a CI log (rich would print the bar only when it
    finishes): one plain line per step, at most every LOG_EVERY seconds, always the last one.
    """
    if quiet:
        yield lambda status="": None
        return
    if not console.is_terminal:
        import time

        state = {"done": 0, "last": time.monotonic(), "start": time.monotonic()}

        def log(status: str = "") -> None:
            state["done"] += 1
            now = time.monotonic()
            if now - state["last"] >= LOG_EVERY or state["done"] == total:
                state["last"] = now
                console.print(f"{desc}: {unit} {state['done']}/{total} ({now - state['start']:.0f} s) {status}".rstrip(),
                              markup=False, highlight=False, soft_wrap=True)

        yield log
        return
    columns = (TextColumn("[bold]{task.description:<18}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("{task.fields[status]}"))
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(desc, total=total, status="")
        yield lambda status="": progress.update(task, advance=1, status=status)


def say(message: str, quiet: bool = False) -> None:
    if not quiet:
        console.print(message, soft_wrap=True)  # one line per message in a log, whatever its width


def warn(message: str) -> None:
    """A warning on stderr, even when quiet: quiet silences progress, never a problem."""
    from rich.markup import escape

    console.print(f"[yellow]warning:[/yellow] {escape(message)}", soft_wrap=True)
