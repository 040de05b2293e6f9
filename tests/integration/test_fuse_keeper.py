"""The FUSE keeper holds the mount while no daemon serves it: a reader blocked across a daemon
restart gets its bytes from the next daemon, and after the grace period an EIO, never a hang."""

import contextlib
import errno
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pyfuse3
import pytest
import trio
from prometheus_client import REGISTRY

from devstack.process import lazy2dfs_argv
from devstack.snapshotter import end_keeper, keeper_pids
from lazy2dfs.fuse import store_ring
from lazy2dfs.fuse.filesystem import FileReader, LayerFilesystem
from lazy2dfs.fuse.keeper import notify_mark
from lazy2dfs.fuse.session import FuseSession, Keeper
from lazy2dfs.fuse.tree import Entry, LayerTree
from lazy2dfs.mountinfo import is_mounted
from tests.support.memory import MemoryReader

FIRST = os.urandom(64 * 1024)
SECOND = os.urandom(3 * 1024 * 1024 + 5)
LARGE = os.urandom(16 * 1024 * 1024)  # more than the kernel reads ahead at once

FILES: dict[str, bytes] = {
    "first.bin": FIRST,
    "second.bin": SECOND,
    "large.bin": LARGE,
}


def layer_tree() -> LayerTree:
    """The same layer, so the same inode numbers, every time."""
    return LayerTree(
        7,
        [
            Entry("first.bin", "reg", size=len(FIRST), key="first.bin"),
            Entry("second.bin", "reg", size=len(SECOND), key="second.bin"),
            Entry("large.bin", "reg", size=len(LARGE), key="large.bin"),
        ],
    )


def serve(root: Path, grace: float, reader: FileReader | None = None) -> FuseSession:
    """A daemon's FUSE side."""
    session = FuseSession(LayerFilesystem(), Keeper(root, grace_seconds=grace))
    session.start()
    reader = reader or MemoryReader(FILES)
    session.call_sync(session.filesystem.add_layer, "7", layer_tree(), reader)
    session.mount()
    return session


class HeldReader(MemoryReader):
    """Holds every read until ``release`` is set (in the FUSE loop)."""

    def __init__(self, files: dict[str, bytes]) -> None:
        super().__init__(files)
        self.entered = threading.Event()
        self.release = trio.Event()

    async def read(self, key: str, offset: int, size: int, into: bytearray | None = None) -> bytes:
        self.entered.set()
        await self.release.wait()
        return await super().read(key, offset, size, into)


def abort_connection(device: int) -> None:
    """Ends a FUSE connection that hangs, so that a failed test does not wedge the machine."""
    connections = Path("/sys/fs/fuse/connections")
    if not any(connections.iterdir()):
        subprocess.run(["mount", "-t", "fusectl", "none", str(connections)], check=False)
    (connections / str(os.minor(device)) / "abort").write_text("1")


class BackgroundRead:
    """Reads a whole file on a thread, as a container would while the daemon is away."""

    def __init__(self, path: Path) -> None:
        self.result: bytes | OSError | None = None
        self.finished = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(path,), daemon=True)
        self._thread.start()

    def _read(self, path: Path) -> None:
        try:
            self.result = path.read_bytes()
        except OSError as exc:
            self.result = exc
        self.finished.set()


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    end_keeper(tmp_path)


def test_a_reader_waits_through_a_restart_and_gets_its_bytes(root: Path) -> None:
    session = serve(root, grace=30)
    layer = session.mountpoint / "7"
    # An open file keeps the mount busy, as a running container's overlay does.
    with open(layer / "first.bin", "rb") as busy:
        assert busy.read() == FIRST
        session.stop()
        assert is_mounted(session.mountpoint) and keeper_pids(root)

        reader = BackgroundRead(layer / "second.bin")
        assert not reader.finished.wait(1.0), "served with no daemon running"
        stopped_at = time.monotonic()
        session = serve(root, grace=30)
        assert reader.finished.wait(30)
        assert reader.result == SECOND
        assert time.monotonic() - stopped_at < 10
        busy.seek(0)
        assert busy.read() == FIRST
    session.stop()
    assert not is_mounted(session.mountpoint)
    deadline = time.monotonic() + 10
    while keeper_pids(root) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not keeper_pids(root), "keeper outlived its mount"


def test_with_no_daemon_a_read_fails_with_eio_after_the_grace(root: Path) -> None:
    session = serve(root, grace=1)
    layer = session.mountpoint / "7"
    with open(layer / "first.bin", "rb"):
        session.stop()
        started = time.monotonic()
        reader = BackgroundRead(layer / "second.bin")
        assert reader.finished.wait(10), "a read hung with no daemon"
        waited = time.monotonic() - started
        assert isinstance(reader.result, OSError) and reader.result.errno == errno.EIO
        assert 1.0 <= waited < 5.0

        # A daemon that comes back later serves again.
        session = serve(root, grace=1)
        assert (layer / "second.bin").read_bytes() == SECOND
    session.stop()


def test_a_keeper_that_waited_past_the_grace_for_its_first_daemon_still_serves(
    root: Path,
) -> None:
    """The kernel's INIT is never failed for want of a daemon: an error would end the mount,
    and every later daemon would find it dead."""
    (root / "fuse").mkdir()
    argv = [sys.executable, "-m", "lazy2dfs.fuse.keeper", "--mountpoint", str(root / "fuse")]
    argv += ["--socket", str(root / "fuse-keeper.sock"), "--grace", "0.3"]
    keeper = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 10
    while not (root / "fuse-keeper.sock").exists():
        assert time.monotonic() < deadline and keeper.poll() is None
        time.sleep(0.05)
    time.sleep(1.5)  # several graces with INIT pending and no daemon
    session = serve(root, grace=0.3)
    try:
        assert (session.mountpoint / "7" / "first.bin").read_bytes() == FIRST
    finally:
        session.stop()


def test_a_daemon_told_the_keeper_is_external_waits_for_it_and_never_starts_one(
    tmp_path: Path,
) -> None:
    (tmp_path / "config.toml").write_text('[fuse]\nkeeper = "external"\n')
    argv = [*lazy2dfs_argv(), "serve", "--root", str(tmp_path / "root")]
    argv += ["--address", str(tmp_path / "s.sock"), "--config", str(tmp_path / "config.toml")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAZY2DFS_")}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 1
    socket_path = tmp_path / "root" / "fuse-keeper.sock"
    assert f"no FUSE keeper listens on {socket_path}" in done.stderr
    assert f"lazy2dfs keeper --root {tmp_path / 'root'}" in done.stderr
    assert not keeper_pids(tmp_path / "root") and not is_mounted(tmp_path / "root" / "fuse")
    assert not (tmp_path / "s.sock").exists()


@contextlib.contextmanager
def read_held_in_the_daemon(
    root: Path, name: str
) -> Iterator[tuple[FuseSession, HeldReader, BackgroundRead]]:
    """A daemon serving, a whole-file read of ``name`` under way and held in the daemon (the
    kernel's pages locked under it) until the test sets ``release``. A read still unfinished
    at the end is aborted, so that a failed test does not leave the reader hanging."""
    held = HeldReader(FILES)
    session = serve(root, grace=30, reader=held)
    device = os.stat(session.mountpoint).st_dev
    reader = BackgroundRead(session.mountpoint / "7" / name)
    try:
        assert held.entered.wait(10), "the kernel's read never came"
        yield session, held, reader
    finally:
        if not reader.finished.is_set():
            abort_connection(device)
        session.stop()


def cut_as_if_no_read_were_in_flight(session: FuseSession, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read can still come between a store's cutting and the keeper's writing it."""

    def whole(inode: int, start: int, end: int) -> list[tuple[int, int]]:
        return [(start, end)]

    monkeypatch.setattr(session.filesystem.reads_in_flight, "outside", whole)


def filled_bytes() -> float:
    return REGISTRY.get_sample_value("lazy2dfs_page_cache_filled_bytes_total") or 0.0


def skipped_bytes() -> float:
    return REGISTRY.get_sample_value("lazy2dfs_page_cache_skipped_bytes_total") or 0.0


def test_a_store_into_pages_a_read_is_filling_never_holds_up_that_read(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel stores into the page cache page by page, waiting for each page's lock, which
    a read in flight holds until its reply: a reply queued behind such a store would never
    come, and the reader (and the keeper) would hang for good."""
    with read_held_in_the_daemon(root, "second.bin") as (session, held, reader):
        cut_as_if_no_read_were_in_flight(session, monkeypatch)
        fill = session.page_cache_fill(layer_tree())
        assert fill is not None
        stored = threading.Event()

        def store() -> None:
            fill("second.bin", 0, memoryview(SECOND))
            stored.set()

        threading.Thread(target=store, daemon=True).start()
        assert stored.wait(10), "a store waited on the kernel in the daemon"
        time.sleep(0.3)  # the keeper's store meets the pages the read holds
        session.call_sync(held.release.set)
        assert reader.finished.wait(10), "a read's reply was held up behind a store"
        assert reader.result == SECOND


def test_stores_that_find_every_slot_waiting_are_dropped_and_the_slots_come_back(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The keeper's writes wait on pages that a read in flight holds: the daemon drops what
    finds no room rather than wait, and stores again once the keeper has written."""
    with read_held_in_the_daemon(root, "second.bin") as (session, held, reader):
        cut_as_if_no_read_were_in_flight(session, monkeypatch)
        fill = session.page_cache_fill(layer_tree())
        assert fill is not None
        before, skipped_before = filled_bytes(), skipped_bytes()
        for _ in range(3):  # 12 slots' worth, against 8
            fill("second.bin", 0, memoryview(SECOND))
        skipped = skipped_bytes() - skipped_before
        assert skipped > 0, "no store was dropped"
        assert filled_bytes() - before + skipped == 3 * len(SECOND)
        session.call_sync(held.release.set)
        assert reader.finished.wait(10), "the read never finished"
        # The keeper writes the stores that waited and frees their slots: a ring's worth of
        # stores goes through again.
        os.stat(session.mountpoint / "7" / "large.bin")
        ring_full = memoryview(LARGE)[: store_ring.SLOTS * store_ring.SLOT_BYTES]
        deadline = time.monotonic() + 10
        while True:
            before = filled_bytes()
            fill("large.bin", 0, ring_full)
            if filled_bytes() - before == len(ring_full):
                break
            assert time.monotonic() < deadline, "the ring's slots never came back"
            time.sleep(0.1)


def test_a_daemon_that_cannot_make_a_ring_serves_without_stores(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused(name: str, flags: int = 0) -> int:
        raise OSError(errno.ENOSYS, "memfd_create refused")

    monkeypatch.setattr(os, "memfd_create", refused)
    session = serve(root, grace=30)
    try:
        fill = session.page_cache_fill(layer_tree())
        assert fill is not None
        path = session.mountpoint / "7" / "second.bin"
        os.stat(path)
        before = filled_bytes()
        fill("second.bin", 0, memoryview(SECOND))
        assert filled_bytes() == before
        assert path.read_bytes() == SECOND
    finally:
        session.stop()


def test_an_older_daemons_stores_in_the_socket_are_dropped(root: Path) -> None:
    """Sent in the socket, stores would queue in the keeper without bound (an older daemon
    sends them so); the reads they meet are not held up either."""
    with read_held_in_the_daemon(root, "second.bin") as (session, held, reader):
        inode = layer_tree().inode_of("second.bin")
        assert inode is not None
        pyfuse3.notify_store(inode, 0, SECOND[: 1 << 20])
        time.sleep(0.3)
        session.call_sync(held.release.set)
        assert reader.finished.wait(10), "a read's reply was held up behind a store"
        assert reader.result == SECOND


def test_a_store_leaves_out_the_bytes_a_read_in_flight_brings(root: Path) -> None:
    """In a cold load the model reads at the fetch's heels: what its reads in flight will
    bring is not sent to the kernel a second time."""
    with read_held_in_the_daemon(root, "large.bin") as (session, held, reader):
        fill = session.page_cache_fill(layer_tree())
        assert fill is not None, "filling the page cache is the default"
        before = REGISTRY.get_sample_value("lazy2dfs_page_cache_filled_bytes_total") or 0.0
        fill("large.bin", 0, memoryview(LARGE))
        stored = REGISTRY.get_sample_value("lazy2dfs_page_cache_filled_bytes_total") or 0.0
        assert 0 < stored - before < len(LARGE), "stored all, the read's bytes included"
        session.call_sync(held.release.set)
        assert reader.finished.wait(10), "the read never finished"
        assert reader.result == LARGE


def test_a_daemon_stores_only_through_a_keeper_that_says_it_relays_notifications(
    root: Path,
) -> None:
    session = serve(root, grace=30)
    try:
        assert session.keeper.relays_notifications()
        assert session.keeper.takes_store_ring()
        # Marks left by another keeper (an older one runs now, which leaves none).
        notify_mark(session.keeper.socket).write_text(f"{session.keeper.pid}0\n")
        store_ring.mark(session.keeper.socket).write_text(f"{session.keeper.pid}0\n")
        assert not session.keeper.relays_notifications()
        assert not session.keeper.takes_store_ring()
    finally:
        session.stop()
