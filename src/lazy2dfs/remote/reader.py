"""The read path's face to FUSE: a file range of one layer → present segments read from the
backing file with one ``pread``; missing ones fetched first (``remote.fetch``).

A sequential reader also gets the next ``READ_AHEAD_BYTES`` of its file fetched in the
background, so its next reads find them; a random reader fetches only what it reads.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from lazy2dfs import metrics
from lazy2dfs.cache.layer import LayerCache
from lazy2dfs.errors import IntegrityError
from lazy2dfs.estargz.decode import DecodedSegment
from lazy2dfs.estargz.layout import BlobLayout
from lazy2dfs.estargz.toc import Chunk
from lazy2dfs.remote.fetch import LayerStats, SegmentFetcher
from lazy2dfs.remote.flight import Fetch

# A reader reading sequentially gets this much of the file after its read fetched ahead.
READ_AHEAD_BYTES = 16 * 1024 * 1024

# Starts a background task in the FUSE loop (FuseSession.spawn).
Spawn = Callable[[str, Callable[[], Awaitable[None]]], object]


class LayerReader:
    """Serves one layer's files (``fuse.FileReader``), by their path in the TOC."""

    def __init__(
        self,
        fetcher: SegmentFetcher,
        spawn: Spawn | None = None,
        read_once: trio.Event | None = None,
    ) -> None:
        """``read_once``: set at the first read; the layers of one image share it."""
        self.fetcher = fetcher
        self.name = fetcher.name
        self.image = fetcher.image
        self.stats: LayerStats = fetcher.stats
        self._layout: BlobLayout = fetcher.layout
        self._cache: LayerCache = fetcher.cache
        self._spawn = spawn
        self._next_offset: dict[str, int] = {}  # by file: where a sequential read goes on
        self._refused = ""
        self.read_once = trio.Event() if read_once is None else read_once  # a container runs

    def refuse(self, why: str) -> None:
        """Every later read fails: the layer is not what its image says it is."""
        self._refused = why

    async def read(
        self, path: str, offset: int, size: int, into: bytearray | None = None
    ) -> bytes | memoryview:
        """Bytes ``offset``..``offset+size`` of the file at ``path`` in the layer; with
        ``into`` (at least ``size`` bytes), bytes in the page cache are read into it and a view
        of it is returned, valid until the next call with the same ``into``."""
        if self._refused:
            raise IntegrityError(f"layer {self.name} is refused: {self._refused}")
        self.read_once.set()
        chunks = self._layout.toc.chunks_for(path, offset, size)
        if not chunks:
            return b""
        self._read_ahead(path, offset, size)
        segments = self._layout.segments_for(chunks)
        uncached: dict[int, DecodedSegment] = {}
        if self._cache.missing(segments):
            uncached = await self.fetcher.ensure(segments, Fetch.READ)
        end = min(offset + size, chunks[-1].file_offset + chunks[-1].size)
        path = chunks[0].path
        data: bytes | memoryview
        if uncached:
            data = await trio.to_thread.run_sync(self._assemble, chunks, uncached, offset, end)
        else:
            data = await self._read_present(path, offset, end - offset, into)
        self.stats.served += len(data)
        metrics.BYTES_SERVED.inc(len(data))
        return data

    async def _read_present(
        self, path: str, offset: int, size: int, into: bytearray | None
    ) -> bytes | memoryview:
        # Just fetched, or read a moment ago: in the page cache, served on the loop
        # without the trip to a worker thread (a tenth of the daemon's CPU in a cold load, by
        # py-spy), and without a fresh 1 MiB buffer per read (another tenth).
        buffer = into if into is not None and len(into) >= size else bytearray(size)
        view = memoryview(buffer)[:size]
        if self._cache.read_cached(path, offset, view):
            return view
        return await trio.to_thread.run_sync(self._cache.read, path, offset, size)

    def _assemble(
        self, chunks: list[Chunk], uncached: dict[int, DecodedSegment], offset: int, end: int
    ) -> bytes:
        """The range from decoded segments the cache could not keep, and the cache."""
        out = bytearray()
        for chunk in chunks:
            lo = max(offset, chunk.file_offset)
            hi = min(end, chunk.file_offset + chunk.size)
            decoded = uncached.get(self._layout.segment_of(chunk).index)
            if decoded is None:
                out += self._cache.read(chunk.path, lo, hi - lo)
                continue
            payload = decoded.payloads[decoded.segment.chunks.index(chunk)]
            out += payload[lo - chunk.file_offset : hi - chunk.file_offset]
        return bytes(out)

    def _read_ahead(self, path: str, offset: int, size: int) -> None:
        sequential = self._next_offset.get(path) == offset
        self._next_offset[path] = offset + size
        if not sequential or self._spawn is None:
            return
        ahead = self._layout.toc.chunks_for(path, offset + size, READ_AHEAD_BYTES)
        segments = self.fetcher.wanted(self._layout.segments_for(ahead), Fetch.READ_AHEAD)
        flights = self.fetcher.context.flights
        segments = [s for s in segments if not flights.in_flight(self.fetcher.key(s))]
        if segments:

            async def fetch() -> None:
                await self.fetcher.ensure(segments, Fetch.READ_AHEAD)

            self._spawn(f"read-ahead {self.name}", fetch)
