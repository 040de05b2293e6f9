"""Serves the one FUSE mount: pyfuse3's trio loop on a thread of its own.

The mount itself belongs to the FUSE keeper (``fuse/keeper.py``), a separate process that
outlives the daemon; the session connects to it, spawning it first if none is running (or, with
an external keeper, waiting for the one something else starts), and hands libfuse the
connection as ``/dev/fd/N``. The gRPC server's threads reach into the loop
with ``call``/``call_sync`` (trio.from_thread), so all filesystem state is touched from the
loop only and needs no locks.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pyfuse3
import trio
import trio.lowlevel

from lazy2dfs import libc, metrics
from lazy2dfs.errors import UnavailableError
from lazy2dfs.fuse import store_ring
from lazy2dfs.fuse.filesystem import LayerFilesystem
from lazy2dfs.fuse.keeper import enlarge_send_buffer, notify_mark
from lazy2dfs.fuse.store_ring import StoreRing
from lazy2dfs.fuse.tree import LayerTree
from lazy2dfs.fuse.wire import OUT_HEADER
from lazy2dfs.logfmt import get_logger
from lazy2dfs.mountinfo import is_mounted, read_mounts

log = get_logger(__name__)

T = TypeVar("T")

START_TIMEOUT = 10.0
KEEPER_POLL_SECONDS = 0.05
PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
# Kernel read-ahead on the mount. At the default 128 KiB every FUSE read is 128 KiB; at 4 MiB
# (one default chunk) sequential readers get 1 MiB requests, the most libfuse negotiates:
# 8x fewer round trips through the daemon for the same bytes.
READ_AHEAD_KB = 4096
# Workers serving FUSE requests concurrently: a read waiting on the network must not block
# lookups and cached reads behind it.
MAX_TASKS = 64

# Puts verified bytes of a layer's file (by its key) at an offset into the page cache.
PageCacheFill = Callable[[str, int, memoryview], None]


def detach_stale_mount(path: Path) -> None:
    """Detaches whatever a killed daemon left mounted at ``path`` ("transport endpoint is not
    connected" for anyone who touched it)."""
    if not is_mounted(path):
        return
    try:
        libc.umount2(path, libc.MNT_DETACH)
    except OSError as exc:
        raise UnavailableError(f"cannot detach stale mount {path}: {exc.strerror}") from exc
    log.warning("stale FUSE mount detached", path=path)


class Keeper:
    """The way to the FUSE keeper of one root: its socket, and how to start it.

    An ``external`` keeper is started by someone else (``lazy2dfs keeper``, e.g. a container
    of its own beside the daemon's, which kubelet restarts independently): the daemon only
    connects to it and never unmounts, so no restart of the daemon's container takes the
    mount from running containers."""

    def __init__(self, root: Path, grace_seconds: float, external: bool = False) -> None:
        self.root = root
        self.mountpoint = root / "fuse"
        self.socket = root / "fuse-keeper.sock"
        self.grace_seconds = grace_seconds
        self.external = external
        self.pid: int | None = None  # of the keeper connected to
        self._child: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        """How to run the keeper: the bare module, so that the process that holds the mount
        for as long as the node runs loads nothing but the relay."""
        argv = [sys.executable, "-m", "lazy2dfs.fuse.keeper", "--mountpoint", str(self.mountpoint)]
        return [*argv, "--socket", str(self.socket), "--grace", str(self.grace_seconds)]

    def prepare_mountpoint(self) -> None:
        """For a new keeper: whatever a killed one left mounted goes."""
        detach_stale_mount(self.mountpoint)
        self.mountpoint.mkdir(mode=0o700, parents=True, exist_ok=True)

    def connect(self) -> socket.socket:
        """A connection to the running keeper, or to a new one (with a fresh mount)."""
        try:
            return self._dial()
        except (FileNotFoundError, ConnectionRefusedError):
            pass
        if self.external:
            return self._wait_for_external()
        self.prepare_mountpoint()
        # Its own session: a Ctrl-C or a stop of the daemon's process group must not reach it.
        proc = self._child = subprocess.Popen(
            self.argv(), stdin=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise UnavailableError(
                    f"FUSE keeper exited with status {proc.returncode}; its log line above says"
                    " why (is /dev/fuse there, and are we root?)"
                )
            try:
                return self._dial()
            except (FileNotFoundError, ConnectionRefusedError):
                time.sleep(KEEPER_POLL_SECONDS)
        proc.kill()
        raise UnavailableError(f"FUSE keeper did not listen on {self.socket} in {START_TIMEOUT}s")

    def _wait_for_external(self) -> socket.socket:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            try:
                return self._dial()
            except (FileNotFoundError, ConnectionRefusedError):
                time.sleep(KEEPER_POLL_SECONDS)
        raise UnavailableError(
            f"no FUSE keeper listens on {self.socket} after {START_TIMEOUT:g}s, and"
            f" fuse.keeper = external forbids starting one: run `lazy2dfs keeper --root"
            f" {self.root}` (as root, beside the daemon), or set fuse.keeper = spawn"
        )

    def _dial(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            enlarge_send_buffer(sock)
            sock.connect(str(self.socket))
        except OSError:
            sock.close()
            raise
        credentials = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, PEERCRED.size)
        self.pid = PEERCRED.unpack(credentials)[0]
        return sock

    def relays_notifications(self) -> bool:
        """Whether the keeper connected to relays notifications (page-cache stores and
        invalidations) apart from replies; an older external one may not, and one would then
        wait for a reply queued behind it."""
        return self._marked(notify_mark(self.socket))

    def takes_store_ring(self) -> bool:
        """Whether the keeper connected to takes page-cache stores in a shared ring (an older
        external one drops the ring's messages)."""
        return self._marked(store_ring.mark(self.socket))

    def _marked(self, mark: Path) -> bool:
        try:
            return mark.read_text().strip() == str(self.pid)
        except OSError:
            return False

    def unmount_unless_busy(self) -> bool:
        """Unmounts (the keeper then exits) unless containers still read through the mount;
        returns whether it did."""
        if overlays_using(self.mountpoint):
            # Not EBUSY: overlayfs takes private clones of its lower mounts, so umount2 would
            # succeed and take the mount from new containers while old ones still read.
            return False
        try:
            libc.umount2(self.mountpoint)
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                log.warning("fuse unmount failed", path=self.mountpoint, error=exc.strerror)
            return False
        self._wait_for_keeper_exit()
        return True

    def _wait_for_keeper_exit(self) -> None:
        """The keeper exits once its mount is gone; wait, so that a stopped daemon leaves no
        process behind (bounded: a keeper that lingers is logged, not waited for)."""
        deadline = time.monotonic() + START_TIMEOUT
        while self.pid is not None and time.monotonic() < deadline:
            if self._child is not None and self._child.poll() is not None:
                return  # our child: exited, and now reaped
            if not _running(self.pid):
                return
            time.sleep(KEEPER_POLL_SECONDS)
        if self.pid is not None:
            log.warning("fuse keeper still running after unmount", pid=self.pid)


def _running(pid: int) -> bool:
    """Whether ``pid`` runs; a zombie (exited, its parent yet to reap it) does not."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def overlays_using(mountpoint: Path) -> list[str]:
    """Mount points of overlay mounts with a lower directory under ``mountpoint``: the
    root file systems of containers on lazily served layers."""
    prefix = f"{mountpoint}/"
    return [
        entry.mount_point
        for entry in read_mounts()
        if entry.fs_type == "overlay"
        and any(o.startswith("lowerdir") and prefix in o for o in entry.super_options)
    ]


class FuseSession:
    """Serves ``filesystem`` on the keeper's mount: ``start`` the loop (layers can then be
    added), ``mount`` to take requests, ``stop`` to let go."""

    def __init__(
        self, filesystem: LayerFilesystem, keeper: Keeper, fill_page_cache: bool = True
    ) -> None:
        """``fill_page_cache``: put fetched bytes into their files' page cache as they arrive
        (``fuse.fill_page_cache``)."""
        self.filesystem = filesystem
        self.keeper = keeper
        self.mountpoint = keeper.mountpoint
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._serving = False
        self._thread = threading.Thread(target=self._run, name="fuse", daemon=True)
        self._fill_page_cache = fill_page_cache
        # Notifications may go to the kernel: libfuse's session is up, and the keeper relays
        # them apart from replies. Held by every notification, and by stop() before it ends
        # libfuse's session under them.
        self._notify_lock = threading.Lock()
        self._notifying = False
        # Stores go into the ring, and its slots' numbers to the keeper on this socket (a
        # duplicate of libfuse's); None without a keeper that takes them.
        self._ring: StoreRing | None = None
        self._stores: socket.socket | None = None

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT) or self._error is not None:
            raise UnavailableError(f"FUSE loop did not start: {self._error!r}")

    def mount(self) -> None:
        """Connects to the keeper and serves requests. Call once every layer is added: a
        restarted daemon first answers the requests its predecessor left unanswered."""
        connection = self.keeper.connect()
        if self._fill_page_cache and self.keeper.takes_store_ring():
            self._attach_ring(connection)
        options = set(pyfuse3.default_options) | {"fsname=lazy2dfs", "subtype=lazy2dfs"}
        # libfuse takes "/dev/fd/N" as an already mounted connection, and closes it at the end.
        pyfuse3.init(self.filesystem, f"/dev/fd/{connection.detach()}", options)
        self._serving = True
        self._notifying = self.keeper.relays_notifications()
        self.call_sync(self._start_serving)
        self._raise_read_ahead()
        log.info("fuse serving", path=self.mountpoint, keeper=self.keeper.socket)

    def _attach_ring(self, connection: socket.socket) -> None:
        """Hands the keeper a new ring for this connection's stores, before any request.
        Without one (no memfd here), nothing is stored: reads stay correct."""
        try:
            ring, fd = StoreRing.create()
        except OSError as exc:
            log.warning(
                "page cache not filled: no store ring",
                error=exc,
                action="reads stay correct, each through the daemon",
            )
            return
        try:
            attach = OUT_HEADER.pack(OUT_HEADER.size, store_ring.ATTACH, 0)
            socket.send_fds(connection, [attach], [fd])
        finally:
            os.close(fd)
        self._ring = ring
        self._stores = connection.dup()

    def _start_serving(self) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(self._serve, name="pyfuse3")

    async def _serve(self) -> None:
        await pyfuse3.main(min_tasks=2, max_tasks=MAX_TASKS)
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()

    def _raise_read_ahead(self) -> None:
        st = os.stat(self.mountpoint)
        knob = Path(f"/sys/class/bdi/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/read_ahead_kb")
        try:
            knob.write_text(str(READ_AHEAD_KB))
        except OSError as exc:
            log.warning(
                "read-ahead not raised",
                path=knob,
                error=exc,
                action="reads stay correct, in 128 KiB requests; mount /sys read-write to fix",
            )

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            log.error("fuse loop failed", error=repr(exc), exc_info=True)

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._ready.set()
            await trio.sleep_forever()

    def spawn(self, name: str, fn: Callable[[], Awaitable[None]]) -> trio.CancelScope:
        """Starts a background task in the loop (call from the loop); cancel it with the scope.
        Its failure is logged, never fatal: background work must not take the mount down."""
        assert self._nursery is not None
        scope = trio.CancelScope()

        async def guarded() -> None:
            with scope:
                try:
                    await fn()
                except Exception as exc:
                    log.warning("background task failed", task=name, error=repr(exc))

        self._nursery.start_soon(guarded, name=name)
        return scope

    def page_cache_fill(self, tree: LayerTree) -> PageCacheFill | None:
        """Puts bytes of ``tree``'s files into the kernel's page cache, from any thread: a
        model that loads behind the background fetch then finds them there, without a FUSE
        read (and its trip through the keeper and this daemon) per MiB. Only verified bytes
        may come here. A store the kernel cannot take (a file nobody has looked up, or the
        mount is not served) is skipped: it only saves a later read. So are the ranges of the
        file's reads in flight, whose replies bring the same bytes. None when
        ``fuse.fill_page_cache`` is off, so that the fetch hands nothing over."""
        if not self._fill_page_cache:
            return None

        def fill(key: str, offset: int, data: memoryview) -> None:
            inode = tree.inode_of(key)
            if inode is not None:
                self._store(inode, offset, data)

        return fill

    def _store(self, inode: int, offset: int, data: memoryview) -> None:
        reads = self.filesystem.reads_in_flight
        with self._notify_lock:
            ring, stores = self._ring, self._stores
            if ring is None or stores is None:
                return
            for first, end in reads.outside(inode, offset, offset + len(data)):
                for start in range(first, end, store_ring.SLOT_BYTES):
                    if not self._notifying:
                        return
                    piece = data[start - offset : min(end, start + store_ring.SLOT_BYTES) - offset]
                    message = ring.put(inode, start, piece)
                    if message is None:
                        metrics.PAGE_CACHE_SKIPPED.inc(len(piece))
                    elif self._notify(stores.send, message):
                        metrics.PAGE_CACHE_FILLED.inc(len(piece))

    def drop_page_cache(self, tree: LayerTree) -> None:
        """Drops the kernel's cached contents of ``tree``'s files, read or stored: a refused
        layer's reads must fail, and pages already cached would still be served."""
        with self._notify_lock:
            for inode in tree.file_inodes():
                if not self._notifying:
                    return
                self._notify(pyfuse3.invalidate_inode, inode, False)

    def _notify(self, send: Callable[..., object], *args: Any) -> bool:
        """One notification, called with the lock held; whether it went to the keeper. A
        kernel that does not know the inode (nobody looked it up) answers the keeper, not us:
        only a broken connection to the keeper fails here, and then every later one would."""
        try:
            send(*args)
        except OSError as exc:
            log.warning(
                "page cache notifications stopped",
                error=exc,
                action="reads stay correct, each through the daemon",
            )
            self._notifying = False
            return False
        return True

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Runs async ``fn`` in the FUSE loop from another thread and returns its result."""
        return trio.from_thread.run(fn, *args, trio_token=self._token)

    def call_sync(self, fn: Callable[..., T], *args: Any) -> T:
        return trio.from_thread.run_sync(fn, *args, trio_token=self._token)

    @property
    def running(self) -> bool:
        return self._token is not None and self._thread.is_alive()

    def stop(self) -> None:
        """Stops serving. The mount goes too, unless containers still use it: the keeper
        then holds their requests for the next daemon (``restart_grace_seconds``)."""
        if not self._thread.ident:
            return  # never started
        with self._notify_lock:
            self._notifying = False
        if self.running:
            if self._serving:
                trio.from_thread.run_sync(pyfuse3.terminate, trio_token=self._token)
            else:
                self.call_sync(self._cancel)
            self._thread.join(timeout=30)
        if not self._serving:
            return
        pyfuse3.close(unmount=False)
        if self._stores is not None:
            self._stores.close()  # the keeper sees the daemon go once both are closed
        if self.keeper.external:
            log.info(
                "fuse mount left to its keeper",
                path=self.mountpoint,
                grace_seconds=self.keeper.grace_seconds,
            )
        elif self.keeper.unmount_unless_busy():
            log.info("fuse unmounted", path=self.mountpoint)
        else:
            log.warning(
                "fuse mount kept for running containers",
                path=self.mountpoint,
                grace_seconds=self.keeper.grace_seconds,
                action="start lazy2dfs serve again before the grace ends, or their reads fail",
            )

    def _cancel(self) -> None:
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()
