"""The payloads written last, kept in memory for the reads that follow them.

A model loads in the order the background fetch goes, a window behind it: its reads find
their bytes here, served as a view, without a copy or a worker thread. Measured when backing
files were written around the page cache, so that the other way was the disk: a cold 1 GiB
gzip eStargz model was ready in 5.4 s against 5.7-5.9 s (daemon 7.0 against 7.2-7.8
CPU-s/GiB); zstd:chunked, fetched faster than it loads, was the same either way. Now the other
way is a copy out of the page cache (``LayerCache.read_cached``).

Shared by every blob's cache of a daemon and bounded in bytes: least recently stored go first.
Thread-safe: the worker threads writing segments store, the FUSE loop and worker threads read.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable

# Bytes kept over all blobs: one background group (``remote.prefetch``), what a model server
# reads a moment after they arrive. Counted in the daemon's peak RSS (goal: 250 MiB). Since
# fetched bytes also go to the page cache (``fuse.fill_page_cache``), 16 MiB do as well as 32:
# a cold 4 GiB gzip model peaked at 221-231 MiB (32: 242-260) and was ready in 20.1-22.2 s
# (21.4-24.4); 1 GiB, 5.15-5.39 s against 4.98-5.09, within this machine's noise.
RECENT_BYTES = 16 * 1024 * 1024


class RecentPayloads:
    """Payloads by (owner, file number, file offset), up to ``max_bytes`` in all."""

    def __init__(self, max_bytes: int = RECENT_BYTES) -> None:
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._kept: OrderedDict[tuple[Hashable, int, int], memoryview] = OrderedDict()
        self._bytes = 0

    def put(self, owner: Hashable, file: int, offset: int, payload: memoryview) -> None:
        if len(payload) > self.max_bytes:
            return
        key = (owner, file, offset)
        with self._lock:
            old = self._kept.pop(key, None)
            if old is not None:
                self._bytes -= len(old)
            self._kept[key] = payload
            self._bytes += len(payload)
            while self._bytes > self.max_bytes:
                self._bytes -= len(self._kept.popitem(last=False)[1])

    def get(self, owner: Hashable, file: int, offset: int) -> memoryview | None:
        with self._lock:
            return self._kept.get((owner, file, offset))

    def forget(self, owner: Hashable) -> None:
        """Drops what ``owner`` stored (its cache closes)."""
        with self._lock:
            for key in [k for k in self._kept if k[0] == owner]:
                self._bytes -= len(self._kept.pop(key))
