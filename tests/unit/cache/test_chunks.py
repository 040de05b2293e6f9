import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazy2dfs.cache.chunks import ChunkCache


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_round_trip_and_reload(tmp_path: Path) -> None:
    cache = ChunkCache(tmp_path, max_bytes=1 << 20)
    data = os.urandom(1000)
    assert cache.get(digest(data)) is None
    assert cache.put(digest(data), data)
    assert cache.get(digest(data)) == data
    reopened = ChunkCache(tmp_path, max_bytes=1 << 20)
    assert reopened.get(digest(data)) == data and reopened.size_bytes == 1000


def test_a_corrupt_file_is_a_miss_and_is_removed(tmp_path: Path) -> None:
    cache = ChunkCache(tmp_path, max_bytes=1 << 20)
    data = b"weights" * 100
    cache.put(digest(data), data)
    path = tmp_path / digest(data)[7:9] / digest(data)[7:]
    path.write_bytes(b"X" + data[1:])
    assert cache.get(digest(data)) is None
    assert not path.exists() and cache.size_bytes == 0


def test_least_recently_used_go_first_but_not_pinned_ones(tmp_path: Path) -> None:
    cache = ChunkCache(tmp_path, max_bytes=3000)
    chunks = [bytes([n]) * 1000 for n in range(4)]
    for chunk in chunks[:3]:
        cache.put(digest(chunk), chunk)
    cache.get(digest(chunks[0]))  # 1 is now the oldest
    with cache.pinned(digest(chunks[1])):
        cache.put(digest(chunks[3]), chunks[3])
        assert cache.get(digest(chunks[1])) == chunks[1]
        assert cache.get(digest(chunks[2])) is None
    assert cache.size_bytes == 3000 and cache.entries == 3


def test_refuses_non_sha256_names(tmp_path: Path) -> None:
    cache = ChunkCache(tmp_path, max_bytes=100)
    for bad in ("md5:abc", "sha256:../../etc", "sha256:" + "A" * 64):
        with pytest.raises(ValueError):
            cache.get(bad)


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "tiny"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_full_disk_means_uncached_not_failed(tiny_disk: Path) -> None:
    cache = ChunkCache(tiny_disk / "chunks", max_bytes=1 << 30)
    big = os.urandom(200 * 1024)
    assert cache.put(digest(big), big) is False
    assert cache.get(digest(big)) is None
    assert list((tiny_disk / "chunks").rglob(".*")) == []
    small = b"fits"
    assert cache.put(digest(small), small) and cache.get(digest(small)) == small
