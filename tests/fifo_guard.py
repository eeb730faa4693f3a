"""``never_opened(fifo)``: a test that hands compress a FIFO fails, instead of hanging, if compress opens it.

Opening a FIFO for reading blocks until a writer opens it. While the guarded block runs, a thread tries every
50 ms to open the FIFO for writing without blocking; that succeeds only when a reader is waiting, and closing it
at once ends the reader's wait (it reads EOF). The guard then fails the test: the FIFO was opened.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path


@contextlib.contextmanager
def never_opened(*fifos: Path):
    stop, opened = threading.Event(), []

    def release():
        while not stop.wait(0.05):
            for fifo in fifos:
                try:
                    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                except OSError:  # ENXIO: nobody is reading it, as it should be
                    continue
                os.close(fd)
                opened.append(fifo)

    thread = threading.Thread(target=release, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
    assert not opened, f"compress opened {opened[0]} (a FIFO) for reading"
