"""compress/_progress.py: without a terminal (a log file, CI), progress is plain lines, not a bar printed at the end."""

from __future__ import annotations

import io

from rich.console import Console

import compress._progress as progress


def test_a_log_gets_plain_lines_while_training(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(progress, "console", Console(file=out, force_terminal=False, width=40))
    clock = iter([0.0, 0.0, 1.0, 6.0, 7.0, 8.0])  # start, then one reading per step
    monkeypatch.setattr("time.monotonic", lambda: next(clock))
    with progress.progress_bar("teacher", 4) as advance:
        for loss in (0.9, 0.5, 0.3, 0.2):
            advance(f"loss {loss}  val 90.00%")
    progress.say("[bold]stage 2/5[/bold] a message longer than forty columns is never wrapped in a log")
    assert out.getvalue().splitlines() == [
        "teacher: epoch 2/4 (6 s) loss 0.5  val 90.00%",  # 5 s after the previous line
        "teacher: epoch 4/4 (8 s) loss 0.2  val 90.00%",  # always the last step
        "stage 2/5 a message longer than forty columns is never wrapped in a log",
    ]
