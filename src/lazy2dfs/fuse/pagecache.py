"""The kernel's page cache of the mount's files, written to by the daemon itself.

Verified bytes go into the pages of their FUSE file as they arrive (``FUSE_NOTIFY_STORE``), so
that a model loading behind the background fetch finds them there instead of sending a FUSE
read through the keeper and the daemon per MiB; a refused layer's pages are invalidated
(``FUSE_NOTIFY_INVAL_INODE``). Both are written to the keeper's ``/dev/fuse`` descriptor,
handed over by the keeper (``fuse.keeper.device_socket``): relayed through the keeper, each
stored byte crossed the keeper's socket and its CPU (0.7 CPU-s of a cold 1 GiB load).

The kernel carries a notification out page by page, waiting for each page's lock, which a
read in flight holds until the daemon's reply reaches it. So notifications are written by a
thread of their own, fed by a queue that never blocks its callers: the worker thread that
verified a segment, whose readers are waiting for it, must not wait on the kernel. A store
that finds the queue full is dropped (it only saves a later read); an invalidation never is.
"""

from __future__ import annotations

import errno
import os
import struct
import threading
from collections import deque
from dataclasses import dataclass

from lazy2dfs import metrics
from lazy2dfs.logfmt import get_logger

log = get_logger(__name__)

OUT_HEADER = struct.Struct("<IiQ")  # struct fuse_out_header: len, error (the code), unique 0
STORE_OUT = struct.Struct("<QQII")  # struct fuse_notify_store_out: nodeid, offset, size, pad
INVAL_INODE_OUT = struct.Struct("<Qqq")  # struct fuse_notify_inval_inode_out: ino, off, len
FUSE_NOTIFY_INVAL_INODE = 2  # enum fuse_notify_code
FUSE_NOTIFY_STORE = 4
# Bytes of stores waiting for the kernel, at most: a few chunks. The payloads are the
# decoder's own buffers, kept alive while queued, so this counts in the daemon's memory.
QUEUED_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class _Store:
    inode: int
    offset: int
    data: memoryview


@dataclass(frozen=True)
class _Invalidate:
    inode: int


class PageCache:
    """Stores and invalidations for the kernel, written in order by one thread. The thread
    owns ``device`` (a duplicate of the keeper's) and closes it when it ends."""

    def __init__(self, device: int, max_queued: int = QUEUED_BYTES) -> None:
        self._device = device
        self._max_queued = max_queued
        self._queue: deque[_Store | _Invalidate | None] = deque()
        self._queued = 0  # bytes of the stores in the queue
        self._ready = threading.Condition()
        self._writing = True
        self._broken = False  # the descriptor failed: nothing more is written
        self._thread = threading.Thread(target=self._write, name="page-cache", daemon=True)
        self._thread.start()

    def store(self, inode: int, offset: int, data: memoryview) -> bool:
        """Queues ``data`` (verified bytes, never changed afterwards) for the pages of
        ``inode`` at ``offset``; False if it was dropped. Never waits for the kernel."""
        with self._ready:
            if not self._writing or self._queued + len(data) > self._max_queued:
                metrics.PAGE_CACHE_DROPPED.inc(len(data))
                return False
            self._queue.append(_Store(inode, offset, data))
            self._queued += len(data)
            self._ready.notify()
        return True

    def invalidate(self, inode: int) -> None:
        """Queues dropping every cached page of ``inode``, after the stores queued before."""
        with self._ready:
            if self._writing:
                self._queue.append(_Invalidate(inode))
                self._ready.notify()

    def close(self, timeout: float = 5.0) -> None:
        """Stops writing: what is queued still goes, then the thread ends and closes the
        descriptor. Waits at most ``timeout`` for it (a store may be waiting for a page under
        a read that only the next daemon answers)."""
        with self._ready:
            self._writing = False
            self._queue.append(None)
            self._ready.notify()
        self._thread.join(timeout)

    def _write(self) -> None:
        try:
            while (note := self._next()) is not None:
                if isinstance(note, _Store):
                    self._send_store(note)
                else:
                    header = OUT_HEADER.pack(
                        OUT_HEADER.size + INVAL_INODE_OUT.size, FUSE_NOTIFY_INVAL_INODE, 0
                    )
                    self._send([header + INVAL_INODE_OUT.pack(note.inode, 0, 0)])
        finally:
            os.close(self._device)

    def _next(self) -> _Store | _Invalidate | None:
        with self._ready:
            while not self._queue:
                self._ready.wait()
            note = self._queue.popleft()
            if isinstance(note, _Store):
                self._queued -= len(note.data)
            return note

    def _send_store(self, store: _Store) -> None:
        size = len(store.data)
        header = OUT_HEADER.pack(OUT_HEADER.size + STORE_OUT.size + size, FUSE_NOTIFY_STORE, 0)
        if self._send([header + STORE_OUT.pack(store.inode, store.offset, size, 0), store.data]):
            metrics.PAGE_CACHE_FILLED.inc(size)

    def _send(self, parts: list[bytes | memoryview]) -> bool:
        if self._broken:
            return False
        try:
            os.writev(self._device, parts)
        except OSError as exc:
            # ENOENT: the kernel has not looked the file up (or has forgotten it), and keeps
            # nothing for it; nothing is lost.
            if exc.errno != errno.ENOENT:
                self._broken = True
                log.warning(
                    "page cache notifications stopped",
                    error=exc,
                    action="none needed: reads stay correct, each through the daemon",
                )
            return False
        return True
