"""The ring in which the daemon hands page-cache stores to the keeper: what the keeper writes
to the kernel is what the daemon put, and a full ring refuses rather than overwrites."""

import os

import pytest

from lazy2dfs.fuse import store_ring
from lazy2dfs.fuse.store_ring import StoreRing
from lazy2dfs.fuse.wire import FUSE_NOTIFY_STORE, NOTIFY_STORE_OUT, OUT_HEADER


def keepers_view(fd: int) -> StoreRing:
    """The keeper maps the same memfd, handed over."""
    return StoreRing(fd)


def test_the_keeper_writes_what_the_daemon_put_and_frees_the_slot() -> None:
    daemon, fd = StoreRing.create()
    keeper = keepers_view(fd)
    os.close(fd)
    data = os.urandom(store_ring.SLOT_BYTES)
    message = daemon.put(9, 4096, memoryview(data))
    assert message is not None
    length, code, unique = OUT_HEADER.unpack_from(message)
    assert (length, code, unique) == (len(message), store_ring.STORE, 0)
    store = keeper.slot(memoryview(message)[OUT_HEADER.size :])
    assert store is not None
    notify, payload, slot = store
    assert OUT_HEADER.unpack_from(notify) == (len(notify) + len(data), FUSE_NOTIFY_STORE, 0)
    assert NOTIFY_STORE_OUT.unpack_from(notify, OUT_HEADER.size) == (9, 4096, len(data), 0)
    assert bytes(payload) == data
    keeper.free(slot)
    # The freed slot is the daemon's again: a whole ring's worth of stores fits.
    assert all(daemon.put(9, 0, memoryview(b"x")) is not None for _ in range(store_ring.SLOTS))


def test_a_full_ring_refuses_a_store_and_overwrites_nothing() -> None:
    daemon, fd = StoreRing.create()
    keeper = keepers_view(fd)
    os.close(fd)
    pieces = [bytes([n]) * 100 for n in range(store_ring.SLOTS)]
    messages = [daemon.put(1, 0, memoryview(piece)) for piece in pieces]
    assert daemon.put(1, 0, memoryview(b"late")) is None
    for piece, message in zip(pieces, messages, strict=True):
        assert message is not None
        store = keeper.slot(memoryview(message)[OUT_HEADER.size :])
        assert store is not None
        assert bytes(store[1]) == piece


@pytest.mark.parametrize(
    "body",
    [
        NOTIFY_STORE_OUT.pack(1, 0, 10, store_ring.SLOTS),  # no such slot
        NOTIFY_STORE_OUT.pack(1, 0, store_ring.SLOT_BYTES + 1, 0),  # past its slot
        NOTIFY_STORE_OUT.pack(1, 0, 10, 0)[:-1],  # short
    ],
)
def test_the_keeper_drops_a_malformed_store(body: bytes) -> None:
    _, fd = StoreRing.create()
    keeper = keepers_view(fd)
    os.close(fd)
    assert keeper.slot(memoryview(body)) is None


def test_a_ring_of_another_size_is_refused() -> None:
    fd = os.memfd_create("not-a-ring")
    try:
        os.ftruncate(fd, 4096)
        with pytest.raises(ValueError, match="store ring"):
            StoreRing(fd)
    finally:
        os.close(fd)
