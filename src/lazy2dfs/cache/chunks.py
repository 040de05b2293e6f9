"""Decompressed chunks on disk, named by the sha256 of their bytes.

Keyed by content, a chunk shared by two layers, images or model versions is stored and fetched
once. A chunk is written to a temporary file and renamed into place, and verified again when
read, so a torn write (power loss) or a flipped bit on disk is a cache miss, never a wrong byte.
The store is bounded: past ``max_bytes`` the least recently used chunks go first, except those
being read right now. A full disk makes a write fail quietly (counted and logged): the read it
served succeeds without caching.
"""

from __future__ import annotations

import errno
import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lazy2dfs.logfmt import get_logger
from lazy2dfs.metrics import CHUNK_CACHE_EVENTS as CACHE_EVENTS

log = get_logger(__name__)


def chunk_id(digest: str) -> str:
    """``sha256:<hex>`` → ``<hex>``, refusing anything that is not a sha256 digest."""
    algorithm, _, hexdigest = digest.partition(":")
    if (
        algorithm != "sha256"
        or len(hexdigest) != 64
        or not all(c in "0123456789abcdef" for c in hexdigest)
    ):
        raise ValueError(f"not a sha256 digest: {digest!r}")
    return hexdigest


class ChunkCache:
    """Thread-safe; its blocking methods are meant for worker threads (trio.to_thread)."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._lru: OrderedDict[str, int] = OrderedDict()  # hex → size, oldest first
        self._pinned: dict[str, int] = {}
        self._bytes = 0
        self.root.mkdir(parents=True, exist_ok=True)
        self._load()

    def _path(self, hexdigest: str) -> Path:
        return self.root / hexdigest[:2] / hexdigest

    def _load(self) -> None:
        entries: list[tuple[float, str, int]] = []
        for sub in self.root.iterdir():
            if not sub.is_dir():
                continue
            for file in sub.iterdir():
                if file.name.startswith("."):
                    file.unlink(missing_ok=True)  # a write that never completed
                    continue
                st = file.stat()
                entries.append((st.st_atime, file.name, st.st_size))
        for _, name, size in sorted(entries):
            self._lru[name] = size
            self._bytes += size

    @property
    def size_bytes(self) -> int:
        return self._bytes

    @property
    def entries(self) -> int:
        return len(self._lru)

    @contextmanager
    def pinned(self, digest: str) -> Iterator[None]:
        """Keeps ``digest`` from eviction while a reader depends on it."""
        hexdigest = chunk_id(digest)
        with self._lock:
            self._pinned[hexdigest] = self._pinned.get(hexdigest, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                self._pinned[hexdigest] -= 1
                if not self._pinned[hexdigest]:
                    del self._pinned[hexdigest]

    def contains(self, digest: str) -> bool:
        with self._lock:
            return chunk_id(digest) in self._lru

    def get(self, digest: str) -> bytes | None:
        """The chunk's bytes, verified, or None."""
        hexdigest = chunk_id(digest)
        with self._lock:
            known = hexdigest in self._lru
            if known:
                self._lru.move_to_end(hexdigest)
        if not known:
            CACHE_EVENTS.labels("miss").inc()
            return None
        try:
            data = self._path(hexdigest).read_bytes()
        except FileNotFoundError:
            self._forget(hexdigest)
            CACHE_EVENTS.labels("miss").inc()
            return None
        if hashlib.sha256(data).hexdigest() != hexdigest:
            log.error("corrupt chunk in cache removed", chunk=digest, path=self._path(hexdigest))
            CACHE_EVENTS.labels("corrupt").inc()
            self._path(hexdigest).unlink(missing_ok=True)
            self._forget(hexdigest)
            return None
        CACHE_EVENTS.labels("hit").inc()
        return data

    def put(self, digest: str, data: bytes) -> bool:
        """Stores verified ``data``; False when the disk refused it (the caller still has it)."""
        hexdigest = chunk_id(digest)
        with self._lock:
            if hexdigest in self._lru:
                return True
        path = self._path(hexdigest)
        staging = path.with_name(f".{hexdigest}.{threading.get_ident()}")
        try:
            path.parent.mkdir(exist_ok=True)
            staging.write_bytes(data)
            os.replace(staging, path)
        except OSError as exc:
            staging.unlink(missing_ok=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                CACHE_EVENTS.labels("disk_full").inc()
                log.warning(
                    "chunk not cached: disk full",
                    chunk=digest,
                    path=self.root,
                    action="free space or lower cache.max_bytes; reads go on uncached",
                )
                return False
            raise
        with self._lock:
            self._lru[hexdigest] = len(data)
            self._bytes += len(data)
        CACHE_EVENTS.labels("write").inc()
        self._evict()
        return True

    def _forget(self, hexdigest: str) -> None:
        with self._lock:
            size = self._lru.pop(hexdigest, None)
            if size is not None:
                self._bytes -= size

    def _evict(self) -> None:
        while True:
            with self._lock:
                if self._bytes <= self.max_bytes:
                    return
                victim = next((h for h in self._lru if h not in self._pinned), None)
                if victim is None:
                    return  # everything left is being read; over the limit until it is not
                self._bytes -= self._lru.pop(victim)
            self._path(victim).unlink(missing_ok=True)
            CACHE_EVENTS.labels("eviction").inc()
