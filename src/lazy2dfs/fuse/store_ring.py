"""The memory in which the daemon hands page-cache stores to the FUSE keeper.

The daemon puts fetched, verified bytes into their files' page cache, and only the keeper may
write to ``/dev/fuse`` (``fuse/keeper.py`` says why). Sent over the keeper's socket, each
stored byte was copied into the socket and out of it again before the kernel's own copy into
the page cache: the keeper's receiving thread alone took 0.65 CPU-s of a cold 1 GiB load (perf),
on a machine whose two cores the load keeps busy. So the daemon copies a store into a slot of
a ring it shares with the keeper (a memfd, handed over once per connection) and sends only the
slot's number; the keeper writes the slot to the kernel and frees it.

Layout: a page of slot states (one byte each: ``FREE`` or ``TAKEN``), then ``SLOTS`` slots of
``SLOT_BYTES``. Only the daemon takes a slot (under its notification lock), only the keeper
frees one, after its write to the kernel returned: neither ever writes a slot the other may
be reading. A daemon that finds no slot free drops the store, as the keeper did when its
buffers were all queued: a store only saves a later read, and waiting for room, even 50 ms,
made a cold 1 GiB load 10.7 s instead of 4.2 (the keeper's writes wait on pages that reads in
flight hold, whose replies queue behind them).

The messages, from the daemon to the keeper on its socket, both ``unique`` 0 with a code no
FUSE notification uses: ``ATTACH`` (16 bytes, the memfd in ``SCM_RIGHTS``), and ``STORE``,
whose body has the layout of ``struct fuse_notify_store_out`` with the slot's number in its
padding.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

from lazy2dfs.fuse.wire import FUSE_NOTIFY_STORE, NOTIFY_STORE_OUT, OUT_HEADER

SLOTS = 8
# One store at most: the keeper writes a slot to the kernel in one message.
SLOT_BYTES = 1024 * 1024
STATES_BYTES = mmap.PAGESIZE
RING_BYTES = STATES_BYTES + SLOTS * SLOT_BYTES
FREE, TAKEN = 0, 1
# In a message's error field, where notifications have their code; none of FUSE's.
ATTACH = 0x4C32_0001
STORE = 0x4C32_0002


def mark(socket_path: Path) -> Path:
    """The file in which a keeper that takes stores in a ring leaves its pid."""
    return socket_path.with_name(socket_path.name + ".ring")


class StoreRing:
    """One connection's ring, mapped."""

    def __init__(self, fd: int) -> None:
        """Maps the ring behind ``fd`` (closed by the caller)."""
        if os.fstat(fd).st_size != RING_BYTES:
            raise ValueError(f"a store ring is {RING_BYTES} bytes, not {os.fstat(fd).st_size}")
        self._map = mmap.mmap(fd, RING_BYTES)
        self._view = memoryview(self._map)

    @classmethod
    def create(cls) -> tuple[StoreRing, int]:
        """A new ring, and its memfd for the keeper (the caller closes it once sent)."""
        fd = os.memfd_create("lazy2dfs-store-ring", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, RING_BYTES)
            return cls(fd), fd
        except BaseException:
            os.close(fd)
            raise

    # The daemon's side.

    def put(self, inode: int, offset: int, data: memoryview) -> bytes | None:
        """Copies ``data`` (at most ``SLOT_BYTES``) into a free slot and returns the message
        that hands it to the keeper; None if every slot is taken."""
        slot = self._view[:SLOTS].tobytes().find(FREE)
        if slot < 0:
            return None
        self._view[slot] = TAKEN
        start = STATES_BYTES + slot * SLOT_BYTES
        self._view[start : start + len(data)] = data
        header = OUT_HEADER.pack(OUT_HEADER.size + NOTIFY_STORE_OUT.size, STORE, 0)
        return header + NOTIFY_STORE_OUT.pack(inode, offset, len(data), slot)

    # The keeper's side.

    def slot(self, body: memoryview) -> tuple[bytes, memoryview, int] | None:
        """From a ``STORE`` message's body: the ``FUSE_NOTIFY_STORE`` header, the bytes to
        store and the slot to free after the write; None if the body is malformed."""
        if len(body) != NOTIFY_STORE_OUT.size:
            return None
        inode, offset, size, slot = NOTIFY_STORE_OUT.unpack(body)
        if slot >= SLOTS or size > SLOT_BYTES:
            return None
        length = OUT_HEADER.size + NOTIFY_STORE_OUT.size + size
        notify = OUT_HEADER.pack(length, FUSE_NOTIFY_STORE, 0)
        notify += NOTIFY_STORE_OUT.pack(inode, offset, size, 0)
        start = STATES_BYTES + slot * SLOT_BYTES
        return notify, self._view[start : start + size], slot

    def free(self, slot: int) -> None:
        self._view[slot] = FREE
