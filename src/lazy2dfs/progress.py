"""Progress of long work (build, convert, pull) for people, and how byte counts are shown.

One implementation for every command: plain text on stderr. On a terminal one line is redrawn
with ``\\r`` (at most ten times a second); elsewhere (CI logs, captured output) each step is
one line and byte counts are not repeated, so logs stay short. Safe to call from worker
threads. Library code takes a ``Progress`` and never prints itself.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

REDRAW_SECONDS = 0.1


def human_bytes(count: float) -> str:
    """``512 B``, ``1.5 KiB``, ``3.2 GiB``: binary units, as container tools print sizes."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


class Progress:
    """``step`` starts a stage, ``update`` reports its bytes, ``done`` ends the work."""

    def __init__(
        self, stream: TextIO | None = None, tty: bool | None = None, quiet: bool = False
    ) -> None:
        self._stream = stream or sys.stderr
        self._tty = self._stream.isatty() if tty is None else tty
        self._quiet = quiet
        self._lock = threading.Lock()
        self._label = ""
        self._last = 0.0
        self._width = 0

    def step(self, label: str) -> None:
        if self._quiet:
            return
        with self._lock:
            self._label = label
            if self._tty:
                self._draw(label)
            else:
                print(label, file=self._stream, flush=True)

    def update(self, done: int, total: int) -> None:
        if self._quiet or not self._tty:
            return
        now = time.monotonic()
        with self._lock:
            if now - self._last < REDRAW_SECONDS and done < total:
                return
            self._last = now
            percent = 100 * done // total if total else 100
            self._draw(f"{self._label} {percent:3d}% {_mib(done)}/{_mib(total)} MiB")

    def done(self, summary: str) -> None:
        if self._quiet:
            return
        with self._lock:
            if self._tty:
                self._draw(summary)
                self._stream.write("\n")
                self._width = 0
            else:
                print(summary, file=self._stream)
            self._stream.flush()

    def _draw(self, text: str) -> None:
        pad = max(0, self._width - len(text))
        self._stream.write("\r" + text + " " * pad)
        self._stream.flush()
        self._width = len(text)


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f}"
