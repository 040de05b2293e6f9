"""The read path end to end below the registry: an eStargz blob in memory, segments fetched on
first read through the real FUSE mount, verified, cached, served again after a restart, and a
complete layer verified against its diff ID and served from its local tree."""

import errno
import hashlib
import io
import mmap
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from lazy2dfs.cache.store import CacheStore
from lazy2dfs.errors import FailedPreconditionError
from lazy2dfs.estargz import Compression, WriterOptions, write_blob_from_directory
from lazy2dfs.fuse.session import FuseSession
from lazy2dfs.layers.mounted import EstargzLayers
from lazy2dfs.remote.fetch import FetchContext
from lazy2dfs.snapshotter.labels import LayerRequest
from lazy2dfs.snapshotter.remote import NotLazyError
from tests.support.fuse import mounted_session
from tests.support.memory import MemoryBlob, MemoryLocator
from tests.support.pagecache import wait_until_cached

CHUNK = 256 * 1024


@pytest.fixture(params=[Compression.ZSTD, Compression.GZIP])
def model(tmp_path: Path, request: pytest.FixtureRequest) -> tuple[dict[str, bytes], MemoryLocator]:
    """A model layer in each format: every test runs on zstd:chunked and on eStargz."""
    files = {
        "model/weights-0.bin": os.urandom(3 * 1024 * 1024 + 5),
        "model/weights-1.bin": os.urandom(2 * 1024 * 1024),
        "model/config.json": b'{"layers": 2}',
    }
    src = tmp_path / "src"
    for name, data in files.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    (src / "model/config.json").chmod(0o640)
    out = io.BytesIO()
    options = WriterOptions(chunk_size=CHUNK, workers=2, compression=request.param)
    result = write_blob_from_directory(src, out, options)
    return files, MemoryLocator(MemoryBlob(out.getvalue()), result.toc_digest, result.diff_id)


@pytest.fixture
def session(tmp_path: Path) -> Iterator[FuseSession]:
    with mounted_session(tmp_path) as mounted:
        yield mounted


REQUEST = LayerRequest("sha256:" + "c" * 64, "127.0.0.1:5000/m:v1", "sha256:" + "a" * 64)


def layers(
    root: Path,
    session: FuseSession,
    locator: MemoryLocator,
    deadline: float = 60.0,
    background: bool = False,
) -> EstargzLayers:
    store = CacheStore(root / "cache", max_bytes=1 << 30)
    context = session.call_sync(lambda: FetchContext(store, deadline=deadline))
    return EstargzLayers(root, session, context, locator, background_fetch=background)


def wait_for_local_tree(remote: EstargzLayers, snapshot_id: int, fuse: Path) -> Path:
    deadline = time.monotonic() + 30
    while remote.path(snapshot_id) == fuse / str(snapshot_id):
        assert time.monotonic() < deadline, "the layer never switched to its local tree"
        time.sleep(0.05)
    return remote.path(snapshot_id)


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
    fetcher = remote.readers[1].fetcher
    chunk = fetcher.layout.toc.chunks_for("model/weights-1.bin", 0, 1)[0]
    locator.blob.corrupt_at = chunk.compressed_offset + chunk.compressed_size // 2
    with pytest.raises(OSError):
        (remote.path(1) / "model/weights-1.bin").read_bytes()
    assert not fetcher.cache.present(fetcher.layout.segment_of(chunk))
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


def test_a_lost_saved_toc_is_fetched_again_and_orphans_go(
    tmp_path: Path, session: FuseSession, model: tuple[dict[str, bytes], MemoryLocator]
) -> None:
    """Power lost before the saved TOC reached the disk (or a disk that lost it): the snapshot
    is not unmountable for ever, its TOC comes from the registry again."""
    files, locator = model
    remote = layers(tmp_path, session, locator)
    remote.attach(7, remote.resolve(REQUEST))
    session.call_sync(session.filesystem.remove_layer, "7")
    shutil.rmtree(tmp_path / "layers/7")
    (tmp_path / "layers/99").mkdir()  # saved for a snapshot a crash mid-Remove left behind
    again = layers(tmp_path, session, locator)
    again.restore(7, REQUEST)
    again.prune({7})
    assert (again.path(7) / "model/config.json").read_bytes() == files["model/config.json"]
    assert (tmp_path / "layers/7/meta.json").exists() and not (tmp_path / "layers/99").exists()


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
    chunks = remote.readers[1].fetcher.layout.toc.chunks_for("model/weights-0.bin")
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


def test_a_complete_layer_is_verified_and_new_mounts_use_its_local_tree(
    tmp_path: Path, session: FuseSession, model: tuple[dict[str, bytes], MemoryLocator]
) -> None:
    files, locator = model
    remote = layers(tmp_path, session, locator, background=True)
    remote.attach(1, remote.resolve(REQUEST))
    fuse_view = remote.path(1)
    local = wait_for_local_tree(remote, 1, session.mountpoint)
    assert not str(local).startswith(str(session.mountpoint))
    for name, data in files.items():
        assert (local / name).read_bytes() == data
        assert (fuse_view / name).read_bytes() == data  # running containers keep reading
        assert os.stat(local / name).st_mode == os.stat(fuse_view / name).st_mode
    assert oct(os.stat(local / "model/config.json").st_mode & 0o777) == oct(0o640)
    # Every byte of the blob fetched once: a second pass for the diff ID fetches nothing.
    assert locator.blob.served < len(locator.blob.data) * 1.02
    # A restarted daemon serves the verified layer from its local tree at once.
    session.call_sync(session.filesystem.remove_layer, "1")
    again = layers(tmp_path, session, locator)
    again.restore(1, REQUEST)
    assert again.path(1) == local


def served_bytes() -> float:
    return REGISTRY.get_sample_value("lazy2dfs_served_bytes_total") or 0.0


def test_bytes_fetched_in_the_background_wait_in_the_page_cache(
    tmp_path: Path, session: FuseSession, model: tuple[dict[str, bytes], MemoryLocator]
) -> None:
    """A model loading behind the background fetch finds its bytes in the page cache: once the
    layer is fetched, reading all of it asks the daemon for next to nothing.

    Not for nothing: the kernel may reclaim stored pages before anyone reads them. This
    machine's does, within a second of the store for a few pages in a hundred (DAMON's
    proactive reclaim, ``kdamond``, pages out page cache nobody has mapped); a reader then
    gets those pages through the daemon, which is correct and costs a read each."""
    files, locator = model
    filled = REGISTRY.get_sample_value("lazy2dfs_page_cache_filled_bytes_total") or 0.0
    remote = layers(tmp_path, session, locator, background=True)
    remote.attach(1, remote.resolve(REQUEST))
    fuse_view = remote.path(1)
    for name in files:
        os.stat(fuse_view / name)  # known to the kernel, as a loader's listing makes them
    wait_for_local_tree(remote, 1, session.mountpoint)
    size = sum(len(data) for data in files.values())
    reclaimed_at_most = size // mmap.PAGESIZE // 10
    # Stores reach the kernel a moment after the fetch (through the keeper's own thread).
    paths = [fuse_view / name for name in files]
    assert wait_until_cached(paths, timeout=10, allowed=reclaimed_at_most) <= reclaimed_at_most
    before = served_bytes()
    for name, data in files.items():
        assert (fuse_view / name).read_bytes() == data
    assert served_bytes() - before <= reclaimed_at_most * mmap.PAGESIZE
    now_filled = REGISTRY.get_sample_value("lazy2dfs_page_cache_filled_bytes_total")
    assert now_filled == filled + size


def test_a_layer_whose_config_names_another_diff_id_is_quarantined(
    tmp_path: Path,
    session: FuseSession,
    model: tuple[dict[str, bytes], MemoryLocator],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An image whose config claims another image's diff ID for its layer: once its bytes are
    all checked, reads fail (what the page cache held of it too) and no new container mounts
    it."""
    files, locator = model
    locator.diff_id = "sha256:" + "d" * 64  # another image's layer
    remote = layers(tmp_path, session, locator, background=True)
    remote.attach(1, remote.resolve(REQUEST))
    fuse_view = session.mountpoint / "1"
    for name in files:
        os.stat(fuse_view / name)  # known to the kernel: fetched bytes go to its page cache
    deadline = time.monotonic() + 30
    while "layer is not what its image says" not in caplog.text:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with pytest.raises(FailedPreconditionError, match="refused"):
        remote.path(1)
    with pytest.raises(OSError) as failed:
        (fuse_view / "model/config.json").read_bytes()
    assert failed.value.errno == errno.EIO
    assert not remote.verified(1)
