"""Which byte ranges of which files the kernel is waiting on a read for.

A cold, fetch-bound load keeps the reader at the fetch's frontier: the kernel's read-ahead asks
for the next MiBs before they arrive, and those reads are answered with the bytes once they
are verified. Storing the same bytes into the page cache as well sent each of them through the
keeper twice (a cold 1 GiB load: 979 MB in read replies and 1024 MiB in stores), and a store
to a page a read holds waits for that read's reply, then writes the page again. So stores
leave out what reads in flight will bring.

Reads start and end in the FUSE loop; stores are cut in the fetch's worker threads: a lock.
"""

from __future__ import annotations

import itertools
import threading

Range = tuple[int, int]  # start, end


class ReadsInFlight:
    """The ranges of the reads not yet answered, by inode."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reads: dict[int, dict[int, Range]] = {}
        self._tokens = itertools.count()

    def begin(self, inode: int, start: int, end: int) -> int:
        """Records a read of ``start``..``end``; the token ends it."""
        token = next(self._tokens)
        with self._lock:
            self._reads.setdefault(inode, {})[token] = (start, end)
        return token

    def end(self, inode: int, token: int) -> None:
        with self._lock:
            reads = self._reads.get(inode)
            if reads is not None:
                reads.pop(token, None)
                if not reads:
                    del self._reads[inode]

    def outside(self, inode: int, start: int, end: int) -> list[Range]:
        """The parts of ``start``..``end`` that no read in flight covers, in order."""
        with self._lock:
            reads = sorted(self._reads.get(inode, {}).values())
        parts: list[Range] = []
        for read_start, read_end in reads:
            if read_end <= start:
                continue
            if read_start >= end:
                break
            if read_start > start:
                parts.append((start, read_start))
            start = max(start, read_end)
        if start < end:
            parts.append((start, end))
        return parts
