"""The read path: file range → chunks → memory, disk cache or one merged range request →
decompress → verify → cache → reply.

``ChunkPool`` is shared by every layer: it knows which chunks are in memory, on disk, or on
their way, so a chunk that two layers, images or model versions share is fetched once and
twenty readers of one chunk wait on one request. ``LayerReader`` knows one blob: where its
chunks are and how to fetch them. Everything runs in the FUSE trio loop; disk I/O, inflation
and hashing go to worker threads (zlib and hashlib release the GIL, so both cores work).
"""

from __future__ import annotations

import enum
import os
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Protocol

import trio

from lazy2dfs import metrics
from lazy2dfs.cache.chunks import ChunkCache
from lazy2dfs.errors import IntegrityError, Lazy2dfsError, UnavailableError
from lazy2dfs.estargz.decode import decode_chunk
from lazy2dfs.estargz.toc import Chunk, Toc
from lazy2dfs.logfmt import get_logger
from lazy2dfs.registry_client.retry import on_behalf_of

log = get_logger(__name__)

# Chunks closer than this in the blob are fetched in one request: a second round trip costs
# more than the bytes in between.
MERGE_GAP = 512 * 1024
# Upper bound of one request, so one reader does not wait for a whole layer.
MAX_SPAN = 16 * 1024 * 1024
# Decoded chunks kept in memory: FUSE asks for at most 1 MiB at a time, and without this every piece
# of a 4 MiB chunk would be read from disk and hashed again.
MEMORY_BYTES = 64 * 1024 * 1024
# Background fetches under way at once, over all layers (upstream stargz uses 2).
BACKGROUND_CONCURRENCY = 2
# A reader reading sequentially gets this much of the file after its read fetched ahead.
READ_AHEAD_BYTES = 16 * 1024 * 1024
# After a read-ahead read fails, the kernel at once asks again for the one page it wanted: a
# chunk whose fetch ran out the deadline this recently fails that read at once, so a reader
# waits the deadline once, not twice.
GAVE_UP_SECONDS = 2.0
# ``lazy2dfs status`` shows each layer's fetch rate over this many seconds.
RATE_WINDOW = 10.0


class Fetch(enum.Enum):
    """Why chunks are fetched: it decides who waits for them and whether they stay in memory.

    A layer's background prefetch goes to disk only: in memory it would push out the chunks a
    sequential reader fetched ahead, and each of those would then be read back from disk and
    hashed again (a fifth of the daemon's CPU reading a 1 GiB model, by py-spy)."""

    READ = "read"  # a reader waits
    READ_AHEAD = "read-ahead"  # a sequential reader wants them next
    PREFETCH = "prefetch"  # every chunk of the layer, in the background

    @property
    def background(self) -> bool:
        return self is not Fetch.READ

    @property
    def remember(self) -> bool:
        return self is not Fetch.PREFETCH


# Starts a background task in the FUSE loop (FuseSession.spawn).
Spawn = Callable[[str, Callable[[], Awaitable[None]]], object]


class BlobSource(Protocol):
    """Byte ranges of one blob in a registry."""

    async def read_range(self, offset: int, length: int) -> bytes: ...


@dataclass(frozen=True)
class Span:
    """Neighbouring chunks fetched with one range request."""

    start: int
    end: int
    chunks: tuple[Chunk, ...]


def plan_spans(chunks: Sequence[Chunk]) -> list[Span]:
    """Groups chunks (any order, duplicates allowed) into range requests in blob order."""
    unique = {c.digest: c for c in chunks}
    ordered = sorted(unique.values(), key=lambda c: c.compressed_offset)
    spans: list[Span] = []
    group: list[Chunk] = []
    for chunk in ordered:
        if group and (
            chunk.compressed_offset - group[-1].compressed_end > MERGE_GAP
            or chunk.compressed_end - group[0].compressed_offset > MAX_SPAN
        ):
            spans.append(_span(group))
            group = []
        group.append(chunk)
    if group:
        spans.append(_span(group))
    return spans


def _span(group: list[Chunk]) -> Span:
    return Span(group[0].compressed_offset, max(c.compressed_end for c in group), tuple(group))


def first_domain_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first lazy2dfs error among parallel fetches' failures (the FUSE layer turns it into
    EIO with its message), or the group itself if there is none."""
    for leaf in _leaves(group):
        if isinstance(leaf, Lazy2dfsError):
            return leaf
    return group


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


class ChunkPool:
    """Verified chunks in memory and on disk, and the fetches under way."""

    def __init__(
        self,
        cache: ChunkCache,
        *,
        deadline: float,
        memory_bytes: int = MEMORY_BYTES,
    ) -> None:
        """``deadline``: seconds a range request may take, retries included, before the read
        fails with EIO (``fetch.deadline_seconds``)."""
        self.cache = cache
        self.deadline = deadline
        # Inflating and hashing run in threads (zlib and hashlib release the GIL): one per core.
        self.decode_limiter = trio.CapacityLimiter(os.cpu_count() or 2)
        self._memory: OrderedDict[str, bytes] = OrderedDict()
        self._memory_bytes = 0
        self._memory_limit = memory_bytes
        self._inflight: dict[str, trio.Event] = {}
        self._gave_up: dict[str, float] = {}  # chunk digest → when its fetch hit the deadline
        self._loading: dict[str, trio.Event] = {}  # chunks being read from disk
        self.background_limiter = trio.CapacityLimiter(BACKGROUND_CONCURRENCY)
        self.waiting_readers = 0
        self.readers_idle = trio.Event()
        self.readers_idle.set()

    def _remember(self, digest: str, data: bytes) -> None:
        if digest in self._memory:
            self._memory.move_to_end(digest)
            return
        self._memory[digest] = data
        self._memory_bytes += len(data)
        while self._memory_bytes > self._memory_limit and len(self._memory) > 1:
            _, old = self._memory.popitem(last=False)
            self._memory_bytes -= len(old)

    async def lookup(self, digest: str, remember: bool = True) -> bytes | None:
        # The kernel sends the 1 MiB reads of one 4 MiB chunk at once: one of them reads and
        # hashes the chunk from disk, the others wait for it.
        while (loading := self._loading.get(digest)) is not None:
            await loading.wait()
        data = self._memory.get(digest)
        if data is not None:
            self._memory.move_to_end(digest)
            metrics.CHUNK_CACHE_EVENTS.labels("memory_hit").inc()
            return data
        loaded = self._loading[digest] = trio.Event()
        try:
            data = await trio.to_thread.run_sync(self.cache.get, digest)
            if data is not None and remember:
                self._remember(digest, data)
        finally:
            del self._loading[digest]
            loaded.set()
        return data

    def contains(self, digest: str) -> bool:
        return digest in self._memory or self.cache.contains(digest)

    async def store(self, digest: str, data: bytes, remember: bool = True) -> None:
        if remember:
            self._remember(digest, data)
        await trio.to_thread.run_sync(self.cache.put, digest, data)

    def give_up(self, digests: Iterable[str]) -> None:
        """Remembers chunks whose fetch ran out the deadline, for ``GAVE_UP_SECONDS``."""
        now = trio.current_time()
        self._gave_up = {d: t for d, t in self._gave_up.items() if now - t < GAVE_UP_SECONDS}
        self._gave_up.update((digest, now) for digest in digests)

    def gave_up_recently(self, digest: str) -> bool:
        when = self._gave_up.get(digest)
        return when is not None and trio.current_time() - when < GAVE_UP_SECONDS

    def in_flight(self, digest: str) -> bool:
        return digest in self._inflight

    def claim(self, digest: str) -> trio.Event | None:
        """None: the caller fetches ``digest`` and must ``release`` it; else wait on the event."""
        event = self._inflight.get(digest)
        if event is not None:
            return event
        self._inflight[digest] = trio.Event()
        return None

    def release(self, digest: str) -> None:
        """Wakes the readers waiting for ``digest``: it is stored, or its fetch failed."""
        event = self._inflight.pop(digest, None)
        if event is not None:
            event.set()


@dataclass
class LayerStats:
    """What one layer has fetched and served, for metrics and ``lazy2dfs status``.

    Updated in the FUSE loop, read by the metrics thread: plain ints and a deque copied in one
    step, so a reader never sees a torn value."""

    size: int
    fetched: int = 0
    served: int = 0
    prefetched: int = 0
    # (monotonic time, bytes) of fetches in the last RATE_WINDOW seconds, oldest first.
    _recent: deque[tuple[float, int]] = field(default_factory=deque, init=False, repr=False)

    def add_fetched(self, count: int, background: bool) -> None:
        now = time.monotonic()
        self.fetched += count
        if background:
            self.prefetched += count
        self._recent.append((now, count))
        while self._recent[0][0] < now - RATE_WINDOW:
            self._recent.popleft()

    def fetch_rate(self) -> float:
        """Bytes per second fetched over the last RATE_WINDOW seconds."""
        since = time.monotonic() - RATE_WINDOW
        return sum(n for t, n in tuple(self._recent) if t >= since) / RATE_WINDOW


class LayerReader:
    """Serves one layer's files from its blob."""

    def __init__(
        self,
        name: str,
        image: str,
        toc: Toc,
        source: BlobSource,
        pool: ChunkPool,
        size: int,
        spawn: Spawn | None = None,
    ) -> None:
        self.name = name
        self.image = image
        self.toc = toc
        self.source = source
        self.pool = pool
        self.stats = LayerStats(size=size)
        self._spawn = spawn
        self._next_offset: dict[str, int] = {}  # by file: where a sequential read goes on

    async def read(self, path: str, offset: int, size: int) -> bytes:
        """Bytes ``offset``..``offset+size`` of the file at ``path`` in the layer."""
        chunks = self.toc.chunks_for(path, offset, size)
        self._read_ahead(path, offset, size)
        with ExitStack() as pins:
            # Another read's cache write must not evict, between our lookup and our fetch,
            # the chunks this read is waiting for: that would cost a second download.
            for digest in {c.digest for c in chunks}:
                pins.enter_context(self.pool.cache.pinned(digest))
            datas = await self._chunks(chunks, Fetch.READ)
        out = bytearray()
        for chunk in chunks:
            data = datas[chunk.digest]
            lo = max(offset, chunk.file_offset) - chunk.file_offset
            hi = min(offset + size, chunk.file_offset + chunk.size) - chunk.file_offset
            out += data[lo:hi]
        self.stats.served += len(out)
        metrics.BYTES_SERVED.inc(len(out))
        return bytes(out)

    def _read_ahead(self, path: str, offset: int, size: int) -> None:
        """A sequential reader (this read starts where its last one ended) gets the next
        ``READ_AHEAD_BYTES`` of the file fetched in the background, so its next reads find
        them; a random reader fetches only what it reads."""
        sequential = self._next_offset.get(path) == offset
        self._next_offset[path] = offset + size
        if not sequential or self._spawn is None or offset + size >= self.toc.resolve(path).size:
            return
        ahead = [
            c
            for c in self.toc.chunks_for(path, offset + size, READ_AHEAD_BYTES)
            if not self.pool.in_flight(c.digest) and not self.pool.contains(c.digest)
        ]
        if ahead:

            async def fetch() -> None:
                await self._chunks(ahead, Fetch.READ_AHEAD)

            self._spawn(f"read-ahead {self.name}", fetch)

    async def _chunks(self, chunks: Sequence[Chunk], why: Fetch) -> dict[str, bytes]:
        found: dict[str, bytes] = {}
        missing: list[Chunk] = []
        for chunk in {c.digest: c for c in chunks}.values():
            if why is Fetch.PREFETCH and self.pool.contains(chunk.digest):
                continue  # cached meanwhile; reading it back would only cost a read and a hash
            data = await self.pool.lookup(chunk.digest, why.remember)
            if data is None:
                missing.append(chunk)
            else:
                found[chunk.digest] = data
        # Bounded: a chunk whose fetch failed under another reader is fetched here once more.
        for _attempt in range(2):
            if not missing:
                break
            missing = await self._fetch(missing, found, why)
        if missing:
            await self._fetch_spans(missing, found, why)
        return found

    async def _fetch(self, chunks: list[Chunk], found: dict[str, bytes], why: Fetch) -> list[Chunk]:
        """Fetches what nobody is fetching, waits for the rest; returns what is still missing."""
        mine: list[Chunk] = []
        waits: list[tuple[Chunk, trio.Event]] = []
        for chunk in chunks:
            event = self.pool.claim(chunk.digest)
            if event is None and self.pool.contains(chunk.digest):
                # Another reader stored it after this one looked: read it, do not fetch it again.
                self.pool.release(chunk.digest)
                event = trio.Event()
                event.set()
            if event is None:
                mine.append(chunk)
            else:
                waits.append((chunk, event))
        try:
            if any(self.pool.gave_up_recently(c.digest) for c in mine):
                raise UnavailableError(
                    f"the registry did not serve a chunk of {self.name} within"
                    f" {self.pool.deadline:g}s, less than {GAVE_UP_SECONDS:g}s ago"
                )
            if mine:
                await self._fetch_spans(mine, found, why)
        finally:
            for chunk in mine:
                self.pool.release(chunk.digest)
        still: list[Chunk] = []
        for chunk, event in waits:
            await event.wait()
            if why is Fetch.PREFETCH and self.pool.contains(chunk.digest):
                continue
            data = await self.pool.lookup(chunk.digest, why.remember)
            if data is None:
                still.append(chunk)
            else:
                found[chunk.digest] = data
        return still

    async def _fetch_spans(self, chunks: list[Chunk], found: dict[str, bytes], why: Fetch) -> None:
        if not why.background:
            self.pool.waiting_readers += 1
            self.pool.readers_idle = trio.Event()
        try:
            async with trio.open_nursery() as nursery:
                for span in plan_spans(chunks):
                    nursery.start_soon(self._fetch_span, span, found, why)
        except BaseExceptionGroup as group:
            raise first_domain_error(group) from group
        finally:
            if not why.background:
                self.pool.waiting_readers -= 1
                if self.pool.waiting_readers == 0:
                    self.pool.readers_idle.set()

    def count_fetched(self, count: int, background: bool) -> None:
        """Bytes of this layer's blob that came from the registry."""
        self.stats.add_fetched(count, background)
        metrics.BYTES_FETCHED.inc(count)

    async def _fetch_span(self, span: Span, found: dict[str, bytes], why: Fetch) -> None:
        start = time.perf_counter()
        try:
            with on_behalf_of(layer=self.name, image=self.image):
                with trio.move_on_after(self.pool.deadline) as deadline:
                    blob = await self.source.read_range(span.start, span.end - span.start)
                if deadline.cancelled_caught:
                    self.pool.give_up(c.digest for c in span.chunks)
                    raise UnavailableError(
                        f"the registry did not serve {span.end - span.start} bytes of"
                        f" {self.name} within {self.pool.deadline:g}s"
                    )
        except Exception as exc:
            log.warning(
                "fetch failed",
                layer=self.name,
                image=self.image,
                reason=exc if isinstance(exc, Lazy2dfsError) else repr(exc),
                offset=span.start,
                length=span.end - span.start,
                background=why.background,
            )
            raise
        if not why.background:
            metrics.READ_WAIT.observe(time.perf_counter() - start)
        self.count_fetched(len(blob), why.background)
        async with trio.open_nursery() as nursery:
            for chunk in span.chunks:
                piece = blob[
                    chunk.compressed_offset - span.start : chunk.compressed_end - span.start
                ]
                nursery.start_soon(self._decode, chunk, piece, found, why)

    async def _decode(
        self, chunk: Chunk, piece: bytes, found: dict[str, bytes], why: Fetch
    ) -> None:
        async with self.pool.decode_limiter:
            try:
                data = await trio.to_thread.run_sync(decode_chunk, chunk, piece)
            except IntegrityError as exc:
                metrics.VERIFICATION_FAILURES.labels("chunk").inc()
                log.error(
                    "chunk verification failed",
                    layer=self.name,
                    image=self.image,
                    reason=exc,
                    chunk=chunk.digest,
                )
                raise
        await self.pool.store(chunk.digest, data, why.remember)
        found[chunk.digest] = data
        # Readers waiting for this chunk go on now, not when the rest of its span is decoded.
        self.pool.release(chunk.digest)

    async def fetch_all(self, limit_bytes: int | None = None) -> None:
        """Background fetch of every chunk (or those before ``limit_bytes`` of the blob), in
        blob order, one span at a time, stepping aside while readers wait on the network."""
        pending = [
            c
            for c in self.toc.iter_chunks()
            if (limit_bytes is None or c.compressed_offset < limit_bytes)
            and not self.pool.contains(c.digest)
        ]
        for span in plan_spans(pending):
            await self.pool.readers_idle.wait()
            async with self.pool.background_limiter:
                await self._chunks(span.chunks, Fetch.PREFETCH)
        log.info("layer fetched", layer=self.name, image=self.image, bytes=self.stats.fetched)
