"""Progress of long work (pull, build, push, convert) for people, and how byte counts are shown.

One implementation for every command, on stderr. On a terminal, byte counts are tqdm progress
bars with the rate and the time left, one per transfer under way (a build pushes several blobs
at once), and step lines print above them. Elsewhere (CI logs, captured output) each step is one
plain line and byte counts are not shown, so logs stay short and free of control characters.
Safe to call from worker threads. Library code takes a ``Progress`` and never prints itself.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, NoReturn, TextIO

if TYPE_CHECKING:
    from tqdm import tqdm


# Redraw a bar at most this often.
REDRAW_SECONDS = 0.1
DEFAULT_COLUMNS = 100
DEFAULT_ROWS = 24


def _tqdm() -> type[tqdm[NoReturn]]:
    """tqdm, imported on a terminal only (0.17 s of a command's start, page cache cold)."""
    from tqdm import tqdm

    return tqdm


def human_bytes(count: float) -> str:
    """``512 B``, ``1.5 KiB``, ``3.2 GiB``: binary units, as container tools print sizes."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


class Progress:
    """``step`` starts a stage; ``update`` reports its bytes (or, given a ``label``, those of a
    transfer of its own, several of which may run at once); ``done`` ends the work."""

    def __init__(
        self, stream: TextIO | None = None, tty: bool | None = None, quiet: bool = False
    ) -> None:
        self._stream = stream or sys.stderr
        self._tty = self._stream.isatty() if tty is None else tty
        self._quiet = quiet
        self._lock = threading.Lock()
        self._label = ""
        self._bars: dict[str, tqdm[NoReturn]] = {}

    def step(self, label: str) -> None:
        if self._quiet:
            return
        with self._lock:
            self._close(self._label)
            self._label = label
            if self._tty:
                _tqdm().write(label, file=self._stream)
            else:
                print(label, file=self._stream, flush=True)

    def update(self, done: int, total: int, label: str | None = None) -> None:
        """``done`` of ``total`` bytes of the current step, or of the transfer ``label``."""
        if self._quiet or not self._tty:
            return
        key = self._label if label is None else label
        with self._lock:
            bar = self._bars.get(key)
            if bar is None:
                sized = self._columns() > 0
                bar = self._bars[key] = _tqdm()(
                    total=total,
                    desc=key,
                    file=self._stream,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    mininterval=REDRAW_SECONDS,
                    leave=False,
                    # A terminal that reports no size (some CI pseudo-terminals) would get
                    # no bar at all from tqdm.
                    dynamic_ncols=sized,
                    ncols=None if sized else DEFAULT_COLUMNS,
                    nrows=None if sized else DEFAULT_ROWS,
                )
            bar.update(done - bar.n)
            if label is not None and done >= total:
                self._close(key)

    def done(self, summary: str) -> None:
        if self._quiet:
            return
        with self._lock:
            for key in list(self._bars):
                self._close(key)
            if self._tty:
                _tqdm().write(summary, file=self._stream)
            else:
                print(summary, file=self._stream)
            self._stream.flush()

    def _columns(self) -> int:
        try:
            return os.get_terminal_size(self._stream.fileno()).columns
        except (OSError, ValueError):
            return 0

    def _close(self, key: str) -> None:
        bar = self._bars.pop(key, None)
        if bar is not None:
            bar.close()


class ReadProgress:
    """A file being read that reports how far the reader got: the byte progress of a stage
    that consumes it (compressing a tar). Reads, seeks and tells pass through."""

    def __init__(self, raw: IO[bytes], report: Callable[[int], None]) -> None:
        self._raw = raw
        self._report = report
        self._seen = 0

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self._seen = max(self._seen, self._raw.tell())
        self._report(self._seen)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True
