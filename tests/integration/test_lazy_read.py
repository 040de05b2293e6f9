"""The read path end to end below the registry: an eStargz blob in memory, chunks fetched on
first read through the real FUSE mount, verified, cached, and served again after a restart."""

import errno
import hashlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from lazy2dfs.cache.chunks import ChunkCache
from lazy2dfs.estargz import WriterOptions
from lazy2dfs.fuse.session import FuseSession
from lazy2dfs.remote.labels import LayerRequest
from lazy2dfs.remote.layers import EstargzLayers
from lazy2dfs.remote.reader import ChunkPool
from lazy2dfs.snapshotter.remote import NotLazyError
from tests.support.fuse import mounted_session
from tests.support.memory import MemoryLocator

CHUNK = 256 * 1024


@pytest.fixture
def model(tmp_path: Path) -> tuple[dict[str, bytes], MemoryLocator]:
    files = {
        "model/weights-0.bin": os.urandom(3 * 1024 * 1024 + 5),
        "model/weights-1.bin": os.urandom(2 * 1024 * 1024),
        "model/config.json": b'{"layers": 2}',
    }
    options = WriterOptions(chunk_size=CHUNK, workers=2)
    return files, MemoryLocator.of_files(files, tmp_path, options)


@pytest.fixture
def session(tmp_path: Path) -> Iterator[FuseSession]:
    with mounted_session(tmp_path) as mounted:
        yield mounted


REQUEST = LayerRequest("sha256:" + "c" * 64, "127.0.0.1:5000/m:v1", "sha256:" + "a" * 64)


def layers(
    root: Path, session: FuseSession, locator: MemoryLocator, deadline: float = 60.0
) -> EstargzLayers:
    pool = ChunkPool(ChunkCache(root / "cache", max_bytes=1 << 30), deadline=deadline)
    return EstargzLayers(root, session, pool, locator, background_fetch=False)


def test_first_read_fetches_only_what_it_needs(
    tmp_path: Path, session: FuseSession, model: tuple[dict[str, bytes], MemoryLocator]
) -> None:
    files, locator = model
    remote = layers(tmp_path, session, locator)
    remote.attach(1, remote.resolve(REQUEST))
    opened = locator.blob.served
    assert opened < 64 * 1024  # footer and TOC only

    config = remote.path(1) / "model/config.json"
    assert config.read_bytes() == files["model/config.json"]
    assert locator.blob.served - opened < CHUNK

    weights = remote.path(1) / "model/weights-0.bin"
    with open(weights, "rb") as f:
        f.seek(2 * CHUNK + 100)
        assert f.read(1000) == files["model/weights-0.bin"][2 * CHUNK + 100 : 2 * CHUNK + 1100]
    assert locator.blob.served - opened < 3 * CHUNK

    for name, data in files.items():
        assert hashlib.sha256((remote.path(1) / name).read_bytes()).digest() == (
            hashlib.sha256(data).digest()
        )
    total = locator.blob.served
    assert total < len(locator.blob.data) * 1.05  # each chunk fetched about once


def test_a_corrupt_chunk_is_an_io_error_and_never_cached(
    tmp_path: Path, session: FuseSession, model: tuple[dict[str, bytes], MemoryLocator]
) -> None:
    files, locator = model
    remote = layers(tmp_path, session, locator)
    remote.attach(1, remote.resolve(REQUEST))
    chunk = remote.readers[1].toc.chunks_for("model/weights-1.bin", 0, 1)[0]
    locator.blob.corrupt_at = chunk.compressed_offset + chunk.compressed_size // 2
    with pytest.raises(OSError):
        (remote.path(1) / "model/weights-1.bin").read_bytes()
    assert not remote.readers[1].pool.contains(chunk.digest)
    locator.blob.corrupt_at = None  # the registry recovers: the same read now succeeds
    assert (remote.path(1) / "model/weights-1.bin").read_bytes() == files["model/weights-1.bin"]


def test_a_wrong_toc_digest_refuses_lazy_serving(
    tmp_path: Path, session: FuseSession, model: tuple[dict[str, bytes], MemoryLocator]
) -> None:
    _, locator = model
    locator.toc_digest = "sha256:" + "0" * 64
    with pytest.raises(NotLazyError) as err:
        layers(tmp_path, session, locator).resolve(REQUEST)
    assert err.value.reason == "toc-mismatch"


def test_restore_needs_no_network_and_reuses_the_cache(
    tmp_path: Path, session: FuseSession, model: tuple[dict[str, bytes], MemoryLocator]
) -> None:
    files, locator = model
    remote = layers(tmp_path, session, locator)
    remote.attach(7, remote.resolve(REQUEST))
    assert (remote.path(7) / "model/weights-1.bin").read_bytes() == files["model/weights-1.bin"]
    # The daemon dies: its in-memory tree goes, what it wrote to disk stays.
    session.call_sync(session.filesystem.remove_layer, "7")
    served, located = locator.blob.served, locator.located
    again = layers(tmp_path, session, locator)
    again.restore(7, REQUEST)
    assert (again.path(7) / "model/weights-1.bin").read_bytes() == files["model/weights-1.bin"]
    assert (locator.blob.served, locator.located) == (served, located)
    assert (again.path(7) / "model/config.json").read_bytes() == files["model/config.json"]


def test_twenty_concurrent_readers_fetch_each_chunk_once(
    tmp_path: Path, session: FuseSession, model: tuple[dict[str, bytes], MemoryLocator]
) -> None:
    files, locator = model
    remote = layers(tmp_path, session, locator)
    remote.attach(1, remote.resolve(REQUEST))
    opened = locator.blob.served
    path = remote.path(1) / "model/weights-0.bin"
    results: list[bytes] = []

    def read() -> None:
        results.append(path.read_bytes())

    threads = [threading.Thread(target=read) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(results) == 20 and all(r == files["model/weights-0.bin"] for r in results)
    chunks = remote.readers[1].toc.chunks_for("model/weights-0.bin")
    compressed = sum(c.compressed_size for c in chunks)
    # Merged spans may carry a few neighbouring bytes, never a second copy of a chunk.
    assert locator.blob.served - opened < compressed + 64 * 1024


def test_a_registry_that_stops_answering_gives_eio_after_the_deadline(
    tmp_path: Path, session: FuseSession, model: tuple[dict[str, bytes], MemoryLocator]
) -> None:
    _, locator = model
    remote = layers(tmp_path, session, locator, deadline=0.5)
    remote.attach(1, remote.resolve(REQUEST))
    locator.blob.stalled = True
    start = time.monotonic()
    with pytest.raises(OSError) as err:
        (remote.path(1) / "model/weights-1.bin").read_bytes()
    assert err.value.errno == errno.EIO
    assert time.monotonic() - start < 10


class CountingCache(ChunkCache):
    """Counts chunks read back from disk (each one a read and a sha256 of the chunk)."""

    disk_reads = 0

    def get(self, digest: str) -> bytes | None:
        data = super().get(digest)
        if data is not None:
            self.disk_reads += 1
        return data


def test_concurrent_lookups_read_a_chunk_from_disk_once(tmp_path: Path) -> None:
    cache = CountingCache(tmp_path / "cache", max_bytes=1 << 30)
    data = os.urandom(CHUNK)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert cache.put(digest, data)
    results: list[bytes | None] = []

    async def main() -> None:
        pool = ChunkPool(cache)

        async def lookup() -> None:
            results.append(await pool.lookup(digest))

        # As the kernel sends the 1 MiB reads of one chunk: all at once.
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(lookup)

    trio.run(main)
    assert results == [data] * 4
    assert cache.disk_reads == 1
