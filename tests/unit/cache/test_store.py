"""All blobs' caches: used ones never evicted, unused ones evicted whole, least recently used
first; chunks found across blobs."""

import os
import time
from pathlib import Path

from lazy2dfs.cache.layer import Gap
from lazy2dfs.cache.store import CacheStore
from lazy2dfs.estargz import WriterOptions
from lazy2dfs.estargz.decode import decode_segment
from lazy2dfs.estargz.layout import BlobLayout
from tests.support.estargz import make_tar, open_bytes, write

CHUNK = 64 * 1024


def layout_of(files: dict[str, bytes]) -> tuple[bytes, BlobLayout]:
    data, result = write(make_tar(files), WriterOptions(chunk_size=CHUNK))
    return data, BlobLayout(open_bytes(data, result.toc_digest))


def digest(n: int) -> str:
    return "sha256:" + f"{n:064x}"


def fill_all(store: CacheStore, name: str, data: bytes, layout: BlobLayout) -> None:
    cache = store.open(name, layout)
    for segment in layout.segments:
        decoded = decode_segment(
            segment, data[segment.start : segment.end], layout.toc.compression, 1 << 20
        )
        assert store.reserve(segment.payload_size + len(decoded.gap))
        cache.store(segment, decoded.payloads, Gap.KNOWN, decoded.gap)
        store.stored(cache, segment.chunks)
    cache.flush()


def test_unused_blobs_go_least_recently_used_first_used_ones_never(tmp_path: Path) -> None:
    data, layout = layout_of({"w": os.urandom(4 * CHUNK)})
    store = CacheStore(tmp_path / "cache", max_bytes=10 * CHUNK)
    for n in (1, 2):
        fill_all(store, digest(n), data, layout)
    first, second = (store.open(digest(n), layout) for n in (1, 2))
    store.release(first)  # opened twice (fill and here): still in use
    store.release(first)
    time.sleep(0.01)
    store.release(second)
    store.release(second)
    fill_all(store, digest(3), data, layout)  # needs room: blob 1 goes, not 2
    assert not (tmp_path / "cache" / f"{1:064x}").exists()
    assert (tmp_path / "cache" / f"{2:064x}").exists()
    # Only blob 3 (in use) left to make room from: nothing can go.
    store.release(store.open(digest(2), layout))
    assert store.reserve(5 * CHUNK) is True  # blob 2 evicted for it
    assert store.reserve(20 * CHUNK) is False


def test_a_restart_finds_the_caches_and_their_lru_order(tmp_path: Path) -> None:
    data, layout = layout_of({"w": os.urandom(2 * CHUNK)})
    store = CacheStore(tmp_path / "cache", max_bytes=1 << 30)
    fill_all(store, digest(1), data, layout)
    store.release(store.open(digest(1), layout))
    store.release(store.open(digest(1), layout))
    again = CacheStore(tmp_path / "cache", max_bytes=1 << 30)
    assert again.blobs == 1 and again.size_bytes >= 2 * CHUNK
    cache = again.open(digest(1), layout)
    assert cache.complete


def test_a_chunk_held_by_one_blob_is_found_for_another(tmp_path: Path) -> None:
    shared = os.urandom(2 * CHUNK)
    data, layout = layout_of({"w": shared})
    store = CacheStore(tmp_path / "cache", max_bytes=1 << 30)
    fill_all(store, digest(1), data, layout)
    holder = store.open(digest(1), layout)
    other = store.open(digest(2), layout)
    chunk = layout.files["w"].chunks[0]
    found = store.holder(chunk.digest, excluding=other)
    assert found is not None and found[0] is holder
    assert store.holder(chunk.digest, excluding=holder) is None
