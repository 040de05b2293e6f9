"""The FUSE keeper: a tiny process that owns the mount, so the daemon can die and come back.

A FUSE mount lives exactly as long as its ``/dev/fuse`` descriptor: when the process holding
it dies, every container reading through the mount gets "transport endpoint is not
connected" for good. So that descriptor does not belong in the daemon, which parses untrusted
input, talks to registries and gets upgraded. The keeper opens ``/dev/fuse``, mounts, and
relays FUSE messages between the kernel and whichever daemon is connected to its socket
(``SOCK_SEQPACKET``, so one message stays one message). The daemon's libfuse reads that
socket as if it were ``/dev/fuse`` (``/dev/fd/N`` as the mountpoint).

A new daemon's libfuse answers nothing before FUSE_INIT, and the kernel sends FUSE_INIT only
once per mount. So the keeper keeps the kernel's INIT and replays it to every later daemon,
swallowing the reply. Requests that the old daemon never answered, and those that arrived
while no daemon was connected, are then sent again — safe, because everything on a lazy2dfs
mount is read-only and a new daemon reproduces every inode number and file handle. A request
no daemon answers within ``grace`` seconds gets EIO: a stopped daemon means failed reads,
never a hang.

The daemon also sends notifications (``unique`` 0): stores of fetched bytes into the page
cache, and invalidations of it. The kernel carries either out page by page, waiting for each
page's lock, which a read in flight holds until its reply: so notifications go to the kernel
from a thread of their own, never ahead of a reply. A store's bytes wait in a ring of slots
the daemon shares with the keeper (``fuse/store_ring.py``), not in the socket; a daemon that
finds no slot free drops the store (it only saves a later read); an invalidation is never
dropped. They are the keeper's to write, not the daemon's: a daemon that wrote them itself,
on a duplicate of this descriptor, could not die while one waited for a page. Killed, its
process stayed with that thread in D state, its socket to the keeper stayed open, so the
keeper never gave the read that held the page to the next daemon, and the reader and the
daemon hung for good (``tests/e2e/test_restart_under_containers.py``). The file
``<socket>.notify`` holds the pid of a keeper that does this, ``<socket>.ring`` that of one
that takes stores in a ring; a daemon sends no notification through a keeper without the
first (an older one would deadlock), and no store without the second. Stores sent in the
socket itself (by an older daemon) are dropped: queued without bound, they would take the
keeper's memory.

The keeper exits when the mount goes away (``/dev/fuse`` reads ENODEV) or on SIGTERM.
"""

from __future__ import annotations

import argparse
import array
import contextlib
import errno
import os
import queue
import signal
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from lazy2dfs import libc
from lazy2dfs.fuse import store_ring
from lazy2dfs.fuse.store_ring import StoreRing
from lazy2dfs.fuse.wire import (
    FUSE_BATCH_FORGET,
    FUSE_FORGET,
    FUSE_INIT,
    FUSE_INTERRUPT,
    FUSE_NOTIFY_STORE,
    IN_HEADER,
    OUT_HEADER,
)
from lazy2dfs.logfmt import configure, get_logger

# By name: run as ``python -m``, this module is __main__, outside the lazy2dfs logger tree.
log = get_logger("lazy2dfs.fuse.keeper")

# Room for the largest request the kernel sends (1 MiB of write payload plus headers) and
# the largest reply (1 MiB of read data plus its header).
MESSAGE_BUFFER = 2 * 1024 * 1024
SOCKET_BUFFER = 8 * 1024 * 1024
NO_REPLY = frozenset({FUSE_FORGET, FUSE_INTERRUPT, FUSE_BATCH_FORGET})
MS_RDONLY, MS_NOSUID, MS_NODEV = 1, 2, 4
SO_SNDBUFFORCE = 32  # <asm-generic/socket.h>; Python's socket module does not name it
# Room for the descriptors a message may carry: the daemon's ring, in one.
ANCILLARY_BYTES = socket.CMSG_SPACE(4 * struct.calcsize("i"))
EXPIRY_CHECK_SECONDS = 0.5


def mount(device: int, mountpoint: Path, name: str) -> None:
    """Mounts the FUSE connection behind ``device`` read-only at ``mountpoint``, as libfuse
    would for a root-owned, ``allow_other``, ``default_permissions`` file system."""
    data = f"fd={device},rootmode=40000,user_id=0,group_id=0,default_permissions,allow_other"
    libc.mount(name, mountpoint, f"fuse.{name}", MS_RDONLY | MS_NOSUID | MS_NODEV, data)


def notify_mark(socket_path: Path) -> Path:
    """The file in which a keeper that relays notifications apart from replies leaves its
    pid."""
    return socket_path.with_name(socket_path.name + ".notify")


def enlarge_send_buffer(sock: socket.socket) -> None:
    """Makes room for the largest message: a SOCK_SEQPACKET message must fit the sender's
    buffer, and a read reply carries up to 1 MiB. Beyond net.core.wmem_max, so root only."""
    sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, SOCKET_BUFFER)


@dataclass
class _Pending:
    message: bytes
    since: float  # when it arrived, or when the daemon serving it went away


@dataclass
class _Connection:
    sock: socket.socket
    outbox: queue.SimpleQueue[bytes | None] = field(default_factory=queue.SimpleQueue)
    ready: bool = False  # INIT answered: requests may flow
    ring: StoreRing | None = None  # where the daemon's stores wait


@dataclass
class _Note:
    """A notification for the kernel, in pieces; a store's slot is freed once it is written."""

    pieces: list[bytes | memoryview]
    ring: StoreRing | None = None
    slot: int = 0


class Relay:
    """Moves FUSE messages between the kernel (``device``) and one daemon at a time."""

    def __init__(self, device: int, listener: socket.socket, grace: float) -> None:
        self._device = device
        self._listener = listener
        self._grace = grace
        self._lock = threading.Lock()
        self._init: bytes | None = None
        self._pending: dict[int, _Pending] = {}
        self._connection: _Connection | None = None
        self._gone = threading.Event()
        self._notes: queue.SimpleQueue[_Note] = queue.SimpleQueue()  # for the kernel, in order
        self.stores_dropped = 0  # sent in the socket (an older daemon's), or malformed

    def run(self) -> None:
        threading.Thread(target=self._from_kernel, name="kernel", daemon=True).start()
        threading.Thread(target=self._expire, name="expire", daemon=True).start()
        threading.Thread(target=self._notify, name="notify", daemon=True).start()
        while not self._gone.is_set():
            try:
                sock, _ = self._listener.accept()
            except OSError:
                break  # stop() shut the listener down
            self._serve(sock)

    def stop(self) -> None:
        """Ends the relay; lock-free, as it runs in a signal handler."""
        self._gone.set()
        connection = self._connection
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
            if connection is not None:
                connection.sock.shutdown(socket.SHUT_RDWR)

    # Kernel to daemon.

    def _from_kernel(self) -> None:
        buffer = bytearray(MESSAGE_BUFFER)
        while True:
            try:
                size = os.readv(self._device, [buffer])
            except OSError as exc:
                if exc.errno in (errno.EINTR, errno.EAGAIN, errno.ENOENT):
                    continue  # ENOENT: the request was interrupted before we read it
                if exc.errno == errno.ENODEV:
                    log.info("fuse mount gone, keeper exits")
                else:
                    log.error("reading /dev/fuse failed, keeper exits", error=exc)
                self.stop()
                return
            message = bytes(memoryview(buffer)[:size])
            _, opcode, unique = IN_HEADER.unpack_from(message)
            with self._lock:
                if opcode == FUSE_INIT and self._init is None:
                    self._init = message
                if opcode not in NO_REPLY:
                    self._pending[unique] = _Pending(message, time.monotonic())
                connection = self._connection
                if connection is not None and connection.ready:
                    connection.outbox.put(message)

    def _expire(self) -> None:
        """Answers EIO to requests no daemon has taken up within the grace period."""
        while not self._gone.wait(EXPIRY_CHECK_SECONDS):
            now = time.monotonic()
            with self._lock:
                if self._connection is not None and self._connection.ready:
                    continue
                # Never INIT: answered with an error it would end the mount for every later
                # daemon; it waits for one however long it takes.
                expired = [
                    u
                    for u, p in self._pending.items()
                    if now - p.since >= self._grace
                    and IN_HEADER.unpack_from(p.message)[1] != FUSE_INIT
                ]
                for unique in expired:
                    del self._pending[unique]
            for unique in expired:
                self._reply(OUT_HEADER.pack(OUT_HEADER.size, -errno.EIO, unique))
            if expired:
                log.warning(
                    "requests failed: no daemon",
                    requests=len(expired),
                    grace_seconds=self._grace,
                    action="start lazy2dfs serve on this root",
                )

    # Daemon to kernel.

    def _serve(self, sock: socket.socket) -> None:
        enlarge_send_buffer(sock)
        connection = _Connection(sock)
        sender = threading.Thread(target=self._send, args=(connection,), name="send", daemon=True)
        sender.start()
        with self._lock:
            self._connection = connection
            init_unique = None if self._init is None else IN_HEADER.unpack_from(self._init)[2]
            if init_unique is None or init_unique in self._pending:
                # The kernel's INIT is still to come, or unanswered: this daemon answers it.
                self._release(connection)
                replayed_init = None
            else:
                connection.outbox.put(self._init)
                replayed_init = init_unique
            log.info("daemon connected", pending_requests=len(self._pending))
        try:
            self._receive(connection, replayed_init)
        finally:
            with self._lock:
                self._connection = None
                now = time.monotonic()
                for pending in self._pending.values():
                    pending.since = now
                log.info(
                    "daemon disconnected",
                    pending_requests=len(self._pending),
                    stores_dropped=self.stores_dropped,
                )
            connection.outbox.put(None)
            sender.join()
            sock.close()

    def _receive(self, connection: _Connection, replayed_init: int | None) -> None:
        buffer = bytearray(MESSAGE_BUFFER)
        while not self._gone.is_set():
            try:
                size, ancillary, _, _ = connection.sock.recvmsg_into([buffer], ANCILLARY_BYTES)
            except OSError:
                return
            if size == 0:
                return
            descriptors = _descriptors(ancillary)
            if size < OUT_HEADER.size:
                log.error("short message from daemon dropped", size=size)
                _close(descriptors)
                continue
            _, code, unique = OUT_HEADER.unpack_from(buffer)
            if unique == 0 and code == store_ring.ATTACH and len(descriptors) == 1:
                connection.ring = self._attach(descriptors[0])
                continue
            _close(descriptors)  # none other is ever sent
            if unique == 0 and code in (store_ring.STORE, FUSE_NOTIFY_STORE):
                self._queue_store(connection, memoryview(buffer)[OUT_HEADER.size : size], code)
                continue
            if unique == 0:
                self._notes.put(_Note([bytes(memoryview(buffer)[:size])]))  # small, never dropped
                continue
            if unique == replayed_init and not connection.ready:
                with self._lock:
                    self._release(connection)  # the kernel had its INIT reply long ago
                continue
            with self._lock:
                self._pending.pop(unique, None)
            self._reply(memoryview(buffer)[:size])

    @staticmethod
    def _attach(fd: int) -> StoreRing | None:
        try:
            return StoreRing(fd)
        except (OSError, ValueError) as exc:
            log.error("daemon's store ring refused", error=exc, action="stores are dropped")
            return None
        finally:
            os.close(fd)

    def _queue_store(self, connection: _Connection, body: memoryview, code: int) -> None:
        """Hands a store in the daemon's ring to the notify thread, which frees its slot once
        written; a store sent in the socket, or a malformed one, is dropped."""
        store = None
        if code == store_ring.STORE and connection.ring is not None:
            store = connection.ring.slot(body)
        if store is None:
            self.stores_dropped += 1
            return
        header, data, slot = store
        self._notes.put(_Note([header, data], connection.ring, slot))

    def _notify(self) -> None:
        while True:
            note = self._notes.get()
            self._reply(note.pieces)
            if note.ring is not None:
                note.ring.free(note.slot)

    def _release(self, connection: _Connection) -> None:
        """Lets requests flow to ``connection``, starting with every unanswered one, in order.
        Called with the lock held."""
        connection.ready = True
        for pending in self._pending.values():
            connection.outbox.put(pending.message)

    def _send(self, connection: _Connection) -> None:
        while (message := connection.outbox.get()) is not None:
            try:
                connection.sock.send(message)
            except OSError:
                return  # the receiving side sees the same failure and ends the connection

    def _reply(self, message: bytes | memoryview | list[bytes | memoryview]) -> None:
        try:
            if isinstance(message, list):
                os.writev(self._device, message)
            else:
                os.write(self._device, message)
        except OSError as exc:
            # ENOENT: the request was interrupted or already answered, nobody waits for it; or
            # a store names a file the kernel has not looked up (or has forgotten).
            if exc.errno != errno.ENOENT:
                log.warning("reply to kernel failed", error=exc)


def _descriptors(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    """The descriptors a message carried (``SCM_RIGHTS``)."""
    fds = array.array("i")
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return list(fds)


def _close(descriptors: list[int]) -> None:
    for fd in descriptors:
        os.close(fd)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lazy2dfs.fuse.keeper")
    parser.add_argument("--mountpoint", type=Path, required=True)
    parser.add_argument("--socket", type=Path, required=True)
    parser.add_argument("--grace", type=float, required=True)
    args = parser.parse_args(argv)
    configure("info")
    device = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    mount(device, args.mountpoint, "lazy2dfs")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    args.socket.unlink(missing_ok=True)
    listener.bind(str(args.socket))
    os.chmod(args.socket, 0o600)
    # Before a daemon can connect: it reads the mark once, when it does.
    marks = [notify_mark(args.socket), store_ring.mark(args.socket)]
    for mark in marks:
        mark.write_text(f"{os.getpid()}\n")
    listener.listen(1)
    relay = Relay(device, listener, args.grace)
    signal.signal(signal.SIGTERM, lambda signum, frame: relay.stop())
    log.info("fuse keeper serving", mountpoint=args.mountpoint, socket=args.socket, pid=os.getpid())
    relay.run()
    args.socket.unlink(missing_ok=True)
    for mark in marks:
        mark.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
