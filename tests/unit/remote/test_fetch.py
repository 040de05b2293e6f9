"""Fetching segments into a blob's cache, in plain trio without FUSE: each segment fetched
once however many readers want it, chunks another blob holds copied instead of fetched, reads
served by pread, and a stalled registry turned into an error after the deadline."""

import gzip
import hashlib
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest
import trio
import trio.testing

from lazy2dfs.cache import layer
from lazy2dfs.cache.layer import Gap
from lazy2dfs.cache.store import CacheStore
from lazy2dfs.chunking import Compression
from lazy2dfs.errors import UnavailableError
from lazy2dfs.estargz import WriterOptions
from lazy2dfs.estargz.decode import DecodedSegment, decode_segment
from lazy2dfs.estargz.layout import BlobLayout, Segment
from lazy2dfs.layers.verify import diff_id
from lazy2dfs.remote import fetch
from lazy2dfs.remote.fetch import (
    BACKGROUND_NICE,
    DECODED_SEGMENTS,
    FetchContext,
    LayerStats,
    SegmentFetcher,
    at_low_priority,
)
from lazy2dfs.remote.flight import Fetch
from lazy2dfs.remote.reader import LayerReader
from tests.support.estargz import make_tar, open_bytes, write

CHUNK = 64 * 1024


class CountingSource:
    """A blob that records each range request; ``stall`` makes it never answer."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.requests: list[tuple[int, int]] = []
        self.stall = False

    async def read_range(self, offset: int, length: int) -> bytes:
        if self.stall:
            await trio.sleep_forever()
        self.requests.append((offset, length))
        await trio.sleep(0.01)  # long enough for other readers to pile up behind it
        return self.data[offset : offset + length]

    async def read_ranges(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        return [await self.read_range(offset, length) for offset, length in ranges]

    def release(self) -> None:
        pass

    @property
    def served(self) -> int:
        return sum(length for _, length in self.requests)


def tar_stream(data: bytes) -> bytes:
    """The blob's whole tar stream, decompressed (its gzip members, TOC and footer included)."""
    return gzip.decompress(data)


def blob(files: dict[str, bytes]) -> tuple[bytes, BlobLayout]:
    data, result = write(make_tar(files), WriterOptions(chunk_size=CHUNK))
    return data, BlobLayout(open_bytes(data, result.toc_digest))


def fetcher_for(
    context: FetchContext, name: str, data: bytes, layout: BlobLayout
) -> tuple[SegmentFetcher, CountingSource]:
    source = CountingSource(data)
    cache = context.store.open(name, layout)
    stats = LayerStats(size=len(data))
    return SegmentFetcher(context, name, "test/image", source, cache, stats), source


def digest(n: int) -> str:
    return "sha256:" + f"{n:064x}"


def test_twenty_readers_fetch_each_segment_once(tmp_path: Path) -> None:
    weights = os.urandom(5 * CHUNK + 3)
    data, layout = blob({"w.bin": weights})

    async def main() -> None:
        context = FetchContext(CacheStore(tmp_path, 1 << 30), deadline=10)
        fetcher, source = fetcher_for(context, digest(1), data, layout)
        reader = LayerReader(fetcher)
        results: list[bytes] = []

        async def read() -> None:
            results.append(bytes(await reader.read("w.bin", 0, len(weights))))

        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(read)
        assert results == [weights] * 20
        compressed = sum(layout.segment_of(c).compressed_size for c in layout.files["w.bin"].chunks)
        assert source.served <= compressed + 64 * 1024
        assert reader.stats.served == 20 * len(weights)

    trio.run(main)


def test_the_node_is_busy_while_segments_are_fetched_and_quiet_after(tmp_path: Path) -> None:
    """What a complete layer's diff ID waits for: no segment of any layer being fetched."""
    weights = os.urandom(3 * CHUNK)
    data, layout = blob({"w.bin": weights})

    async def main() -> None:
        context = FetchContext(CacheStore(tmp_path, 1 << 30), deadline=10)
        fetcher, _source = fetcher_for(context, digest(1), data, layout)
        busy: list[bool] = []
        done = trio.Event()

        async def watch() -> None:
            while not done.is_set():
                busy.append(context.activity.quiet_for() == 0)
                await trio.sleep(0.001)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            await fetcher.ensure(list(layout.segments), Fetch.PREFETCH)
            done.set()
        assert fetcher.cache.complete and any(busy)
        assert 0 < context.activity.quiet_for() < 1.0
        assert await context.activity.wait_quiet(0.2, 5.0)
        assert context.activity.quiet_for() >= 0.2

    trio.run(main)


def test_a_file_another_blob_holds_is_copied_not_fetched(tmp_path: Path) -> None:
    shared = os.urandom(4 * CHUNK)
    old_data, old_layout = blob({"w.bin": shared, "v": b"1"})
    new_data, new_layout = blob({"w.bin": shared[: 3 * CHUNK] + os.urandom(CHUNK), "v": b"2"})

    async def main() -> None:
        context = FetchContext(CacheStore(tmp_path, 1 << 30), deadline=10)
        old, _ = fetcher_for(context, digest(1), old_data, old_layout)
        await old.ensure(list(old_layout.segments), Fetch.PREFETCH)
        new, source = fetcher_for(context, digest(2), new_data, new_layout)
        reader = LayerReader(new)
        assert await reader.read("w.bin", 0, 3 * CHUNK) == shared[: 3 * CHUNK]
        assert source.requests == []  # three unchanged chunks: all copied
        chunks = new_layout.files["w.bin"].chunks
        states = [new.cache.gap_state(new_layout.segment_of(c)) for c in chunks[:3]]
        assert states == [Gap.ASSUMED_EMPTY] * 3
        # The changed last chunk, and the gaps copies cannot know, come from the registry.
        await new.ensure(list(new_layout.segments), Fetch.PREFETCH)
        assert new.cache.complete
        assert source.served < new_layout.toc.payload_end - 2 * CHUNK
        # The tar stream rebuilt from copies and fetches is the layer's: the copies'
        # assumed-empty gaps were right.
        tail = new_data[new_layout.toc.payload_end :]
        assert (
            diff_id(new.cache, tail) == "sha256:" + hashlib.sha256(tar_stream(new_data)).hexdigest()
        )

    trio.run(main)


def test_a_stalled_disk_holds_only_a_few_decoded_segments_and_not_the_decoders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cache's disk stops answering: the decoders go on past the writes waiting for it
    (more segments decoded than there are decoding threads), but only so far, so memory stays
    bounded; once the disk answers, every byte arrives."""
    weights = os.urandom(12 * CHUNK)
    data, layout = blob({"w.bin": weights})
    disk = threading.Event()
    decoded: list[int] = []
    write = layer._write_all

    def stalled_write(fd: int, view: memoryview, offset: int) -> None:
        assert disk.wait(timeout=30)
        write(fd, view, offset)

    def counted_decode(
        segment: Segment, compressed: memoryview, compression: Compression, gap_limit: int
    ) -> DecodedSegment:
        decoded.append(segment.index)
        return decode_segment(segment, compressed, compression, gap_limit)

    monkeypatch.setattr(layer, "_write_all", stalled_write)
    monkeypatch.setattr(fetch, "decode_segment", counted_decode)

    async def main() -> None:
        context = FetchContext(CacheStore(tmp_path, 1 << 30), deadline=60)
        fetcher, _ = fetcher_for(context, digest(1), data, layout)
        with_payloads = sum(1 for s in layout.segments if s.chunks)
        assert with_payloads > DECODED_SEGMENTS

        def waiting_for_the_disk() -> int:
            return sum(1 for i in decoded if layout.segments[i].chunks)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(fetcher.ensure, list(layout.segments), Fetch.PREFETCH)
            try:
                with trio.fail_after(10):
                    while waiting_for_the_disk() < DECODED_SEGMENTS:
                        await trio.sleep(0.01)
                await trio.sleep(0.3)
                assert waiting_for_the_disk() == DECODED_SEGMENTS
            finally:
                disk.set()
        assert fetcher.cache.complete
        assert fetcher.cache.read("w.bin", 0, len(weights)) == weights

    trio.run(main)


def test_a_stalled_registry_fails_the_read_after_the_deadline_once(tmp_path: Path) -> None:
    data, layout = blob({"w.bin": os.urandom(2 * CHUNK)})

    async def main() -> None:
        context = FetchContext(CacheStore(tmp_path, 1 << 30), deadline=5)
        fetcher, source = fetcher_for(context, digest(1), data, layout)
        source.stall = True
        reader = LayerReader(fetcher)
        start = trio.current_time()
        with pytest.raises(UnavailableError, match="within 5s"):
            await reader.read("w.bin", 0, 100)
        assert trio.current_time() - start == pytest.approx(5, abs=0.1)
        # The kernel asks again at once after a failed read-ahead: no second full wait.
        with pytest.raises(UnavailableError, match="less than"):
            await reader.read("w.bin", 0, 100)
        assert trio.current_time() - start < 5.5

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_background_decoding_runs_lower_and_gives_the_thread_its_priority_back() -> None:
    """A layer's background fetch must not take the CPU a starting container needs; the
    worker threads it borrows then decode reads someone waits for, at full priority."""
    seen: list[tuple[int, int]] = []

    def work() -> None:
        thread = threading.get_native_id()
        seen.append((thread, os.getpriority(os.PRIO_PROCESS, thread)))

    async def main() -> None:
        await trio.to_thread.run_sync(at_low_priority(work))
        await trio.to_thread.run_sync(work)  # trio's idle worker thread, reused

    trio.run(main)
    base = os.getpriority(os.PRIO_PROCESS, 0)
    (background_thread, background), (read_thread, read) = seen
    assert background_thread == read_thread
    assert (background, read) == (base + BACKGROUND_NICE, base)
