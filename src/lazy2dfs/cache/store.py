"""All cached blobs under ``<root>/cache``: which are in use, which chunks they hold, and what
goes when the disk bound is reached.

A blob's cache (``LayerCache``) lives as long as its directory, not as long as a mount: a layer
pulled again, or the same allotment in the next model version, finds its bytes. A blob in use
by a snapshot is never evicted; unused ones go whole, least recently used first, when new bytes
would take the cache past ``cache.max_bytes``. When nothing can go, new segments are served
without being kept: a full cache or disk means uncached reads, never failed ones.

Chunks are indexed by digest across blobs, so a chunk that another blob holds (a file that did
not change between two builds of a layer) is copied locally instead of fetched.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from lazy2dfs import metrics
from lazy2dfs.cache.layer import LayerCache
from lazy2dfs.digest import is_sha256_digest
from lazy2dfs.errors import InvalidArgumentError
from lazy2dfs.estargz.layout import BlobLayout
from lazy2dfs.estargz.toc import Chunk
from lazy2dfs.logfmt import get_logger

log = get_logger(__name__)

_USED = "used.json"  # when the blob was last released, for LRU order across restarts


@dataclass
class _Entry:
    cache: LayerCache | None  # None while only on disk
    users: int
    last_used: float
    size: int


class CacheStore:
    """The blob caches of one daemon root, bounded by ``max_bytes`` over unused blobs."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(root, 0o700)
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._chunks: dict[str, tuple[LayerCache, Chunk]] = {}
        for directory in root.iterdir():
            if directory.name.startswith("."):
                shutil.rmtree(directory, ignore_errors=True)  # an eviction cut short
                continue
            self._entries[directory.name] = _Entry(
                None, 0, _last_used(directory), _disk_bytes(directory)
            )

    def directory(self, blob_digest: str) -> Path:
        if not is_sha256_digest(blob_digest):
            raise InvalidArgumentError(f"{blob_digest!r} is not a sha256 blob digest")
        return self.root / blob_digest.removeprefix("sha256:")

    def open(self, blob_digest: str, layout: BlobLayout) -> LayerCache:
        """The cache of ``blob_digest``, in use until ``release``."""
        name = self.directory(blob_digest).name
        with self._lock:
            entry = self._entries.get(name)
            if entry is not None and entry.cache is not None:
                entry.users += 1
                return entry.cache
        cache = LayerCache(self.root / name, layout)
        with self._lock:
            entry = self._entries.setdefault(name, _Entry(None, 0, time.time(), 0))
            if entry.cache is None:
                entry.cache = cache
                entry.size = cache.stored_bytes
                self._index(cache)
            else:
                cache.close()
            entry.users += 1
            return entry.cache

    def release(self, cache: LayerCache) -> None:
        """No snapshot uses ``cache`` any more (once every ``open`` is released): it stays on
        disk, evictable."""
        name = cache.directory.name
        with self._lock:
            entry = self._entries.get(name)
            if entry is None or entry.cache is not cache:
                return
            entry.users -= 1
            if entry.users > 0:
                return
            entry.cache = None
            entry.last_used = time.time()
            entry.size = cache.stored_bytes
            self._chunks = {d: v for d, v in self._chunks.items() if v[0] is not cache}
        cache.close()
        (cache.directory / _USED).write_text(json.dumps({"released": entry.last_used}))

    def forget(self, cache: LayerCache) -> None:
        """Removes a blob's cache for good (a quarantined layer)."""
        self.release(cache)
        with self._lock:
            entry = self._entries.get(cache.directory.name)
            if entry is not None and entry.users == 0:
                del self._entries[cache.directory.name]
            else:
                return
        _remove(cache.directory)

    # Room.

    def reserve(self, count: int) -> bool:
        """Makes room for ``count`` more bytes by evicting unused blobs; False when it cannot
        (the bytes are then served without being kept)."""
        with self._lock:
            self._refresh_sizes()
            total = sum(e.size for e in self._entries.values())
            if total + count <= self.max_bytes:
                return True
            victims = sorted(
                (e.last_used, name) for name, e in self._entries.items() if e.users == 0
            )
            doomed = []
            for _, name in victims:
                if total + count <= self.max_bytes:
                    break
                total -= self._entries.pop(name).size
                doomed.append(name)
        for name in doomed:
            _remove(self.root / name)
            metrics.CACHE_EVICTIONS.inc()
            log.info("cached layer evicted", blob="sha256:" + name, reason="cache.max_bytes")
        return total + count <= self.max_bytes

    def _refresh_sizes(self) -> None:
        for entry in self._entries.values():
            if entry.cache is not None:
                entry.size = entry.cache.stored_bytes

    @property
    def size_bytes(self) -> int:
        with self._lock:
            self._refresh_sizes()
            return sum(e.size for e in self._entries.values())

    @property
    def blobs(self) -> int:
        with self._lock:
            return len(self._entries)

    # Chunks shared between blobs.

    def _index(self, cache: LayerCache) -> None:
        for segment in cache.layout.segments:
            if cache.present(segment):
                for chunk in segment.chunks:
                    self._chunks.setdefault(chunk.digest, (cache, chunk))

    def stored(self, cache: LayerCache, chunks: tuple[Chunk, ...]) -> None:
        """``chunks`` of ``cache`` are present now: other blobs may copy them."""
        with self._lock:
            for chunk in chunks:
                self._chunks.setdefault(chunk.digest, (cache, chunk))

    def holder(self, digest: str, excluding: LayerCache) -> tuple[LayerCache, Chunk] | None:
        """A cache (other than ``excluding``) that holds a chunk with ``digest``."""
        with self._lock:
            found = self._chunks.get(digest)
        if found is None or found[0] is excluding:
            return None
        return found

    def flush(self) -> int:
        """Records every segment written so far (see ``LayerCache.flush``); how many."""
        with self._lock:
            caches = [e.cache for e in self._entries.values() if e.cache is not None]
        return sum(cache.flush() for cache in caches)


def _last_used(directory: Path) -> float:
    try:
        return float(json.loads((directory / _USED).read_text())["released"])
    except (OSError, ValueError, KeyError, TypeError):
        return directory.stat().st_mtime


def _disk_bytes(directory: Path) -> int:
    """Blocks in use below ``directory``, a hard-linked file (the local tree) once."""
    seen: set[int] = set()
    total = 0
    for path, _, files in os.walk(directory):
        for name in files:
            try:
                st = os.lstat(os.path.join(path, name))
            except FileNotFoundError:
                continue
            if st.st_ino not in seen:
                seen.add(st.st_ino)
                total += st.st_blocks * 512
    return total


def _remove(directory: Path) -> None:
    """Renames first, so a crash mid-removal leaves a dot-directory the next start removes."""
    doomed = directory.with_name(f".{directory.name}.{os.getpid()}")
    try:
        os.rename(directory, doomed)
    except FileNotFoundError:
        return
    shutil.rmtree(doomed, ignore_errors=True)
