"""Progress bars (rich) and the console; silent when quiet."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

console = Console(stderr=True)


@contextlib.contextmanager
def progress_bar(desc: str, total: int, quiet: bool = False) -> Iterator[Callable[[str], None]]:
    """Yield ``advance(status)``; one call per unit of work (an epoch)."""
    if quiet:
        yield lambda status="": None
        return
    columns = (TextColumn("[bold]{task.description:<18}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("{task.fields[status]}"))
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(desc, total=total, status="")
        yield lambda status="": progress.update(task, advance=1, status=status)


def say(message: str, quiet: bool = False) -> None:
    if not quiet:
        console.print(message)


def warn(message: str) -> None:
    """A warning on stderr, even when quiet: quiet silences progress, never a problem."""
    from rich.markup import escape

    console.print(f"[yellow]warning:[/yellow] {escape(message)}")
