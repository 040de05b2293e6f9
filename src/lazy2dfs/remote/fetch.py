"""Fetching segments of one blob into its cache: copied from another blob when a cache holds
the same chunks, otherwise range requests (merged, several at once) → decode and verify in
threads → written into the backing files.

Everything runs in the FUSE trio loop; decompression, hashing and disk writes go to worker
threads (ISA-L, zstandard, hashlib and the file system all release the GIL, so both cores
work). A layer's background fetch decodes at a lower CPU priority than reads someone waits
for (nice +10 for the thread, while it decodes): on 2 cores it took the CPU a starting
container and its first reads needed (first tensor of a 1 GiB model, cold: 1.0-1.1 s, was
1.2-1.4 s; the whole model as fast as before). Since the background fetch starts at the
image's first read rather than at the mount, it was tried again at full priority: cold 1 GiB,
17 pairs taking turns, the model ready no sooner (medians 2.91 s against 2.97 zstd:chunked,
3.72 against 3.74 gzip, 2.86 against 2.85 through CRI), the first tensor sooner after
``lazy2dfs pull`` (0.64 against 0.69 and 0.74) and later through CRI (0.62 against 0.55).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import ParamSpec, Protocol, TypeVar

import trio

from lazy2dfs import metrics
from lazy2dfs.cache.layer import DiskFullError, Gap, LayerCache
from lazy2dfs.cache.store import CacheStore
from lazy2dfs.errors import IntegrityError, Lazy2dfsError, UnavailableError
from lazy2dfs.estargz.decode import DecodedSegment, decode_segment
from lazy2dfs.estargz.layout import BlobLayout, Segment
from lazy2dfs.estargz.toc import Chunk, EntryType
from lazy2dfs.logfmt import get_logger
from lazy2dfs.registry_client import parse_reference
from lazy2dfs.registry_client.retry import on_behalf_of
from lazy2dfs.remote.flight import (
    GAVE_UP_SECONDS,
    ByteBudget,
    Fetch,
    FetchActivity,
    ReaderGate,
    SingleFlight,
)
from lazy2dfs.remote.spans import Span, plan_spans

log = get_logger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

# Background fetches under way at once, over all layers (upstream stargz uses 2).
BACKGROUND_CONCURRENCY = 2
# How much lower a background fetch's decoding runs (nice), beside reads someone waits for.
BACKGROUND_NICE = 10
# Segments being decoded, or decoded and being written to the cache's disk, over all layers
# (each holds its payloads in memory). The writes wait on the disk outside the decoders'
# limit: on a disk taking 10 ms per 4 MiB a cold 1 GiB zstd:chunked model was ready in 7.5 s
# against 8.5 (medians of 4 each, taking turns); peak RSS 195-205 MiB against 182-191.
DECODED_SEGMENTS = 4
# Range requests of one layer in flight at once: one stream cannot fill a fast link while the
# bytes of the previous one are decoded.
LAYER_REQUESTS = 3
# Decoded bytes a segment may hold beyond its payloads, per tar entry whose header it carries
# (a ustar header with PAX records for long names and xattrs), plus padding; and at most.
GAP_PER_ENTRY = 16 * 1024
GAP_SLACK = 64 * 1024
MAX_GAP = 64 * 1024 * 1024
# Compressed bytes fetched and being decoded, over all layers: four 16 MiB spans (the
# background fetch's two groups and readers' own). At 96 MiB (with 64 MiB of payloads then kept
# in memory for readers) the daemon's peak RSS was 254 MiB, past the 250 asked.
IN_FLIGHT_BYTES = 64 * 1024 * 1024
# ``lazy2dfs status`` shows each layer's fetch rate over this many seconds.
RATE_WINDOW = 10.0
# Written segments are made durable and recorded in batches this often (and when a layer is
# complete): a crash costs at most this much fetching again. Seldom, so that the cache's writes
# reach the disk at the idle I/O class (``cache.writeback``), not forced by the flush's
# fdatasync at the normal one, where they made the registry's reads and a starting container's
# wait (before ``cache.writeback``: cold 1 GiB zstd:chunked ready in 4.9-5.1 s against 5.8-6.5,
# first tensor 0.69-0.85 s against 0.96-1.40, 3 pairs taking turns; flushed every 0.5 s, 6.2 s).
FLUSH_SECONDS = 30.0


class BlobSource(Protocol):
    """Byte ranges of one blob in a registry."""

    async def read_range(self, offset: int, length: int) -> bytes: ...

    async def read_ranges(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """The bytes of each ``(offset, length)``, in the order asked, in one request where
        the registry allows."""
        ...

    def release(self) -> None:
        """The caller holds every byte of the blob it will need (its layer's cache is
        complete): a whole copy kept for it may go."""
        ...


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


class FetchContext:
    """What every layer's fetches share: the cache store, the deadline, readers-first, one
    flight per segment, whether any fetch is under way, and the limits on threads and
    background work."""

    def __init__(self, store: CacheStore, *, deadline: float) -> None:
        """``deadline``: seconds a range request may take, retries included, before the read
        fails with EIO (``fetch.deadline_seconds``)."""
        self.store = store
        self.deadline = deadline
        self.gate = ReaderGate()
        self.flights = SingleFlight()
        self.activity = FetchActivity()
        self.decode_limiter = trio.CapacityLimiter(os.cpu_count() or 2)
        self.decoded_limiter = trio.CapacityLimiter(DECODED_SEGMENTS)
        self.background_limiter = trio.CapacityLimiter(BACKGROUND_CONCURRENCY)
        self.in_flight = ByteBudget(IN_FLIGHT_BYTES)

    async def record_written(self) -> None:
        """Runs for the daemon's life: records written segments every ``FLUSH_SECONDS``."""
        while True:
            await trio.sleep(FLUSH_SECONDS)
            await trio.to_thread.run_sync(self.store.flush)


def gap_limits(layout: BlobLayout) -> dict[int, int]:
    """Per segment, the decoded bytes its gap may hold: the tar headers of the entries that
    follow its payloads in TOC (= tar) order, until the next segment's payload."""
    counts: dict[int, int] = {}
    current = 0
    for entry in layout.toc.entries:
        if entry.type is EntryType.CHUNK:
            continue
        counts[current] = counts.get(current, 0) + 1
        file = layout.files.get(entry.name) if entry.type is EntryType.REG else None
        if file is not None:
            current = layout.segment_of(file.chunks[-1]).index
    return {
        i: min(MAX_GAP, GAP_SLACK + GAP_PER_ENTRY * counts.get(i, 0))
        for i in range(len(layout.segments))
    }


# Called from a worker thread with each payload just verified: its file's TOC path, its offset
# in the file, its bytes (valid for the call only).
OnVerified = Callable[[str, int, memoryview], None]


class SegmentFetcher:
    """Makes segments of one blob present in its cache."""

    def __init__(
        self,
        context: FetchContext,
        name: str,
        image: str,
        source: BlobSource,
        cache: LayerCache,
        stats: LayerStats,
        on_verified: OnVerified | None = None,
    ) -> None:
        """``on_verified``: where fetched payloads go besides the cache (the FUSE mount puts
        them into the page cache, where a loading model finds them)."""
        self.context = context
        self.name = name
        self.image = image
        self.source = source
        self.cache = cache
        self.layout = cache.layout
        self.stats = stats
        self._requests = trio.CapacityLimiter(LAYER_REQUESTS)
        self._gap_limits = gap_limits(self.layout)
        self._on_verified = on_verified

    def key(self, segment: Segment) -> tuple[str, int]:
        return (str(self.cache.directory), segment.index)

    def wanted(self, segments: Sequence[Segment], why: Fetch) -> list[Segment]:
        """Those of ``segments`` still to fetch: absent ones, and for the background fetch
        also those whose gap is unknown (the diff ID needs it)."""
        if why is Fetch.PREFETCH:
            return [s for s in segments if self.cache.gap_state(s) in (None, Gap.UNKNOWN)]
        return self.cache.missing(segments)

    async def ensure(self, segments: Sequence[Segment], why: Fetch) -> dict[int, DecodedSegment]:
        """Makes ``segments`` present. Returns the decoded segments the cache could not keep
        (disk full), which the caller serves from memory."""
        uncached: dict[int, DecodedSegment] = {}
        todo = self.wanted(segments, why)
        # Bounded: a segment whose fetch failed under another reader is fetched here once more.
        for _attempt in range(2):
            if not todo:
                return uncached
            todo = await self._claim_and_fetch(todo, why, uncached)
        if todo:
            await self._fetch(todo, why, uncached)
        return uncached

    async def _claim_and_fetch(
        self, segments: list[Segment], why: Fetch, uncached: dict[int, DecodedSegment]
    ) -> list[Segment]:
        """Fetches what nobody is fetching, waits for the rest; returns what is still wanted."""
        flights = self.context.flights
        mine: list[Segment] = []
        waits: list[tuple[Segment, trio.Event]] = []
        for segment in segments:
            event = flights.claim(self.key(segment))
            if event is None and not self.wanted([segment], why):
                # Stored after this reader looked: nothing to fetch.
                flights.release(self.key(segment))
                continue
            if event is None:
                mine.append(segment)
            else:
                waits.append((segment, event))
        try:
            if any(flights.gave_up_recently(self.key(s)) for s in mine):
                raise UnavailableError(
                    f"the registry did not serve {self.name} within"
                    f" {self.context.deadline:g}s, less than {GAVE_UP_SECONDS:g}s ago"
                )
            if mine:
                await self._fetch(mine, why, uncached)
        finally:
            for segment in mine:
                flights.release(self.key(segment))
        for _segment, event in waits:
            await event.wait()
        return [s for s, _ in waits if self.wanted([s], why) and s.index not in uncached]

    async def _fetch(
        self, segments: list[Segment], why: Fetch, uncached: dict[int, DecodedSegment]
    ) -> None:
        with self.context.activity.fetching():
            await self._copy_or_fetch(segments, why, uncached)

    async def _copy_or_fetch(
        self, segments: list[Segment], why: Fetch, uncached: dict[int, DecodedSegment]
    ) -> None:
        copied = await self._copy_from_other_blobs(segments, why)
        rest = [s for s in segments if s.index not in copied]
        if not rest:
            return
        # A reader's wait (network and decoding) makes background fetches step aside.
        waiting = nullcontext() if why.background else self.context.gate.reading()
        try:
            with waiting:
                async with trio.open_nursery() as nursery:
                    for span in plan_spans(rest):
                        nursery.start_soon(self._fetch_span, span, why, uncached)
        except BaseExceptionGroup as group:
            raise first_domain_error(group) from group

    async def _fetch_span(
        self, span: Span, why: Fetch, uncached: dict[int, DecodedSegment]
    ) -> None:
        async with self.context.in_flight.hold(span.size):
            await self._fetch_and_decode(span, why, uncached)

    async def _fetch_and_decode(
        self, span: Span, why: Fetch, uncached: dict[int, DecodedSegment]
    ) -> None:
        start = time.perf_counter()
        context = self.context
        try:
            with on_behalf_of(layer=self.name, image=self.image):
                async with self._requests:
                    with trio.move_on_after(context.deadline) as cut:
                        pieces = await self.source.read_ranges(
                            [(run.start, run.size) for run in span.runs]
                        )
                if cut.cancelled_caught:
                    failure = (
                        f"the registry did not serve {span.size} bytes of {self.name}"
                        f" within {context.deadline:g}s"
                    )
                    # No attempt ended, so the retries recorded nothing: record it here.
                    metrics.REGISTRY_HEALTH.failed(_registry_of(self.image), failure)
                    raise UnavailableError(failure)
        except Exception as exc:
            if isinstance(exc, UnavailableError):
                # Failed for as long as a reader may wait (deadline, or retries spent): the
                # kernel's immediate retry of a failed read-ahead fails at once, not again
                # after as long.
                context.flights.give_up(self.key(s) for s in span.segments)
            log.warning(
                "fetch failed",
                layer=self.name,
                image=self.image,
                reason=exc if isinstance(exc, Lazy2dfsError) else repr(exc),
                offset=span.start,
                length=span.size,
                background=why.background,
            )
            raise
        if not why.background:
            metrics.READ_WAIT.observe(time.perf_counter() - start)
        self.count_fetched(sum(len(p) for p in pieces), why.background)
        async with trio.open_nursery() as nursery:
            for run, data in zip(span.runs, pieces, strict=True):
                view = memoryview(data)
                for segment in run.segments:
                    piece = view[segment.start - run.start : segment.end - run.start]
                    nursery.start_soon(self._decode_and_store, segment, piece, uncached, why)

    async def _decode_and_store(
        self,
        segment: Segment,
        piece: memoryview,
        uncached: dict[int, DecodedSegment],
        why: Fetch,
    ) -> None:
        decode = at_low_priority(self._decode) if why is Fetch.PREFETCH else self._decode
        async with self.context.decoded_limiter:
            async with self.context.decode_limiter:
                try:
                    decoded = await trio.to_thread.run_sync(decode, segment, piece)
                except IntegrityError as exc:
                    metrics.VERIFICATION_FAILURES.labels("chunk").inc()
                    log.error(
                        "chunk verification failed",
                        layer=self.name,
                        image=self.image,
                        reason=exc,
                        segment=segment.start,
                    )
                    raise
            # Outside the decoders' limit: a thread waiting on the disk leaves them its core.
            kept = await trio.to_thread.run_sync(
                self._write, segment, decoded.payloads, Gap.KNOWN, decoded.gap
            )
        if kept:
            self.context.store.stored(self.cache, segment.chunks)
        else:
            uncached[segment.index] = decoded
        # Readers waiting for this segment go on now, not when the rest of its span is done.
        # Not before the write: handing them the verified bytes at once (flights carrying them)
        # cut a cold load's first read by the write's 55 ms, yet neither the first tensor nor
        # the model came sooner (1 GiB, 19 pairs taking turns, gzip and zstd): the load waits
        # on the CPU and the disk, not on a reader's turn.
        self.context.flights.release(self.key(segment))

    def _decode(self, segment: Segment, piece: memoryview) -> DecodedSegment:
        """In a worker thread: decode, verify, hand the payloads on. Handed on before the
        write to disk, not after: a model loading at the fetch's heels then finds them in the
        page cache sooner, asks for fewer of them by FUSE reads (cold 1 GiB zstd:chunked, 8
        runs each taking turns: ready 4.40 s against 4.58, daemon 4.45 CPU-s/GiB against
        4.65)."""
        decoded = decode_segment(
            segment, piece, self.layout.toc.compression, self._gap_limits[segment.index]
        )
        if self._on_verified is not None:
            for chunk, payload in zip(segment.chunks, decoded.payloads, strict=True):
                self._on_verified(chunk.path, chunk.file_offset, payload)
        return decoded

    def _write(
        self,
        segment: Segment,
        payloads: Sequence[bytes | memoryview],
        gap: Gap,
        gap_bytes: bytes = b"",
    ) -> bool:
        if not self.context.store.reserve(segment.payload_size + len(gap_bytes)):
            metrics.CACHE_EVENTS.labels("full").inc()
            return False
        try:
            self.cache.store(segment, payloads, gap, gap_bytes)
        except DiskFullError as exc:
            metrics.CACHE_EVENTS.labels("disk_full").inc()
            log.warning(
                "segment not cached: disk full",
                layer=self.name,
                reason=exc,
                action="free space or lower cache.max_bytes; reads go on uncached",
            )
            return False
        metrics.CACHE_EVENTS.labels("write").inc()
        return True

    async def _copy_from_other_blobs(self, segments: list[Segment], why: Fetch) -> set[int]:
        """Copies segments whose every chunk another blob's cache holds (a file unchanged
        between two builds of a layer); returns the indices copied."""
        store = self.context.store
        copied: set[int] = set()
        for segment in segments:
            ends_a_file = any(self.layout.is_final(c) for c in segment.chunks)
            if why is Fetch.PREFETCH and ends_a_file:
                continue  # the background fetch needs the gap too, which only a fetch gives
            holders = [store.holder(c.digest, self.cache) for c in segment.chunks]
            if not segment.chunks or any(h is None for h in holders):
                continue
            try:
                ok = await trio.to_thread.run_sync(self._copy, segment, holders, ends_a_file)
            except (OSError, Lazy2dfsError) as exc:
                log.info("chunk copy failed, fetching instead", layer=self.name, reason=repr(exc))
                continue
            if ok:
                copied.add(segment.index)
                store.stored(self.cache, segment.chunks)
                metrics.CACHE_EVENTS.labels("copied").inc()
        return copied

    def _copy(
        self,
        segment: Segment,
        holders: list[tuple[LayerCache, Chunk] | None],
        ends_a_file: bool,
    ) -> bool:
        payloads = []
        for chunk, holder in zip(segment.chunks, holders, strict=True):
            assert holder is not None
            source, source_chunk = holder
            data = source.read(source_chunk.path, source_chunk.file_offset, source_chunk.size)
            if "sha256:" + hashlib.sha256(data).hexdigest() != chunk.digest:
                raise IntegrityError(f"cached copy of {chunk.digest} does not match it")
            payloads.append(data)
        return self._write(segment, payloads, Gap.UNKNOWN if ends_a_file else Gap.ASSUMED_EMPTY)

    def count_fetched(self, count: int, background: bool) -> None:
        """Bytes of this layer's blob that came from the registry."""
        self.stats.add_fetched(count, background)
        metrics.BYTES_FETCHED.inc(count)


def _registry_of(image: str) -> str:
    try:
        return parse_reference(image).registry
    except Lazy2dfsError:
        return image


def first_domain_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first lazy2dfs error among parallel fetches' failures (the FUSE layer turns it into
    EIO with its message), or the group itself if there is none."""
    for leaf in _leaves(group):
        if isinstance(leaf, Lazy2dfsError):
            return leaf
    return group


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            found.extend(_leaves(exc))
        else:
            found.append(exc)
    return found


def at_low_priority(work: Callable[P, T]) -> Callable[P, T]:
    """``work`` run by its worker thread at ``BACKGROUND_NICE`` more than it had, then given
    back the priority it had: the threads are shared with reads someone waits for. Giving it
    back takes root's privilege (the daemon's); without it, the priority is left alone."""
    if os.geteuid() != 0:
        return work

    def lowered(*args: P.args, **kwargs: P.kwargs) -> T:
        thread = threading.get_native_id()
        before = os.getpriority(os.PRIO_PROCESS, thread)
        os.setpriority(os.PRIO_PROCESS, thread, before + BACKGROUND_NICE)
        try:
            return work(*args, **kwargs)
        finally:
            os.setpriority(os.PRIO_PROCESS, thread, before)

    return lowered
