"""The page-cache notifications the daemon writes, read back from a pipe in the kernel's
place: what they say, and that a caller never waits for them."""

import os
import struct
import time

from lazy2dfs.fuse.pagecache import PageCache

HEADER = struct.Struct("<IiQ")
STORE = struct.Struct("<QQII")
INVAL = struct.Struct("<Qqq")


def read_exactly(fd: int, size: int) -> bytes:
    data = b""
    while len(data) < size:
        piece = os.read(fd, size - len(data))
        assert piece, "the pipe closed early"
        data += piece
    return data


def test_a_store_and_an_invalidation_reach_the_kernel_in_order_as_fuse_notifications() -> None:
    read_end, write_end = os.pipe()
    page_cache = PageCache(write_end)
    payload = os.urandom(10_000)
    assert page_cache.store(inode=42, offset=8192, data=memoryview(payload))
    page_cache.invalidate(43)
    page_cache.close()
    length, code, unique = HEADER.unpack(read_exactly(read_end, HEADER.size))
    assert (length, code, unique) == (HEADER.size + STORE.size + len(payload), 4, 0)
    assert STORE.unpack(read_exactly(read_end, STORE.size)) == (42, 8192, len(payload), 0)
    assert read_exactly(read_end, len(payload)) == payload
    length, code, unique = HEADER.unpack(read_exactly(read_end, HEADER.size))
    assert (length, code, unique) == (HEADER.size + INVAL.size, 2, 0)
    assert INVAL.unpack(read_exactly(read_end, INVAL.size)) == (43, 0, 0)
    assert os.read(read_end, 1) == b"", "the writer closes its descriptor when it ends"
    os.close(read_end)


def test_stores_the_kernel_is_behind_on_are_dropped_without_waiting() -> None:
    """A pipe nobody reads stands for a kernel waiting on pages that reads in flight hold."""
    read_end, write_end = os.pipe()
    page_cache = PageCache(write_end, max_queued=1 << 20)
    piece = memoryview(bytes(256 * 1024))
    started = time.monotonic()
    taken = [page_cache.store(1, n * len(piece), piece) for n in range(16)]
    assert time.monotonic() - started < 1.0
    assert taken[:4] == [True] * 4, "the queue takes what fits"
    assert not all(taken), "and drops the rest"
    os.close(read_end)  # the writer's blocked write fails, and it ends
    page_cache.close()
