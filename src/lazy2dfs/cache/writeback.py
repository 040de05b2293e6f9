"""Backing files written back to the disk as they are written, and their pages dropped from
the page cache a little behind the writes.

A cold load keeps two copies of the model in the page cache: the FUSE files' pages, which
containers map, and the backing files' pages the cache writes. Left dirty until the next flush,
the backing files' copy grew with the model, and a fresh page is dear on the benchmark's VM (it
reports free memory to its host: ``cache.layer`` says why). So each written range is handed
to the disk at once, at the idle I/O class (the disk serves it only when the registry's and
the containers' reads leave it idle), and once ``WINDOW_BYTES`` more were written its pages
are dropped, those already on the disk: the next writes then take pages freed a moment ago.
Cold 4 GiB, loopback, runs taking turns: zstd:chunked ready in 17.1-18.5 s (median 17.5, 5
runs) against 18.5-23.2 (19.9), the daemon at 4.6-5.0 CPU-s/GiB against 5.8-7.0; gzip eStargz
19.3 and 19.7 s against 23.7 and 27.4, 5.8-5.9 CPU-s/GiB against 8.2-8.6. Cold 1 GiB as fast as
before: zstd:chunked 2.97-3.64 s (median 3.25, 10 runs) against 2.91-4.47 (3.30), gzip 3.94-5.94
(4.71, 4 runs) against 4.07-5.25 (4.67); the page cache after the load 1.1 GiB, not 2.0. The
same with writeback at the normal I/O class, dropped 8 chunks behind, was ready later (1 GiB:
5.80 s against 5.54): the writes then took the disk from the registry's reads.

Durability is not this module's business: a segment is recorded only after ``flush``
``fdatasync``s its files, which then finds little left to write.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

from lazy2dfs import libc

# Written bytes whose pages stay: a model loading at the fetch's heels reads them from there.
WINDOW_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class WrittenRange:
    """Bytes written into the backing file numbered ``file``."""

    file: int
    offset: int
    size: int


class WritebackWindow:
    """The ranges of one cache's backing files written last, ``window`` bytes of them.

    Thread-safe: the fetch's worker threads write at once."""

    def __init__(self, window: int = WINDOW_BYTES) -> None:
        self._window = window
        self._ranges: deque[WrittenRange] = deque()
        self._bytes = 0
        self._lock = threading.Lock()

    def written(self, fd: int, written: WrittenRange) -> list[WrittenRange]:
        """Starts the writeback of ``written``, just written through ``fd``, at the idle I/O
        class; returns the ranges written before it that fall out of the window now. Their
        pages may be dropped (``POSIX_FADV_DONTNEED`` leaves those not yet on the disk)."""
        try:
            with libc.idle_io_priority():
                libc.start_writeback(fd, written.offset, written.size)
        except OSError:
            # A hint only: the flush's fdatasync writes what is left and reports what fails.
            return []
        out: list[WrittenRange] = []
        with self._lock:
            self._ranges.append(written)
            self._bytes += written.size
            while self._bytes > self._window:
                old = self._ranges.popleft()
                self._bytes -= old.size
                out.append(old)
        return out
