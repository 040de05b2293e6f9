"""The build's progress display: one line per step on stderr, with the time since the start.

Lines, not a redrawn screen, so that the output reads the same in a terminal, a CI log and a
captured test stream. Safe to call from the encoding threads.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO


def human_size(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    value = size / 1024
    for unit in ("KiB", "MiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


class Progress:
    def __init__(self, stream: TextIO | None = None, quiet: bool = False) -> None:
        self._stream = stream
        self._quiet = quiet
        self._start = time.monotonic()
        self._lock = threading.Lock()

    def __call__(self, message: str) -> None:
        if self._quiet:
            return
        stream = self._stream or sys.stderr
        with self._lock:
            print(f"[{time.monotonic() - self._start:6.1f}s] {message}", file=stream, flush=True)
