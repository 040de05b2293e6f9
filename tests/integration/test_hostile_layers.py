"""Hostile images against the read path and the FUSE mount (issue 14): each attack is refused
with a clear reason, or bounded, and costs other layers nothing."""

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from lazy2dfs.cache.store import CacheStore
from lazy2dfs.daemon import GIL_SWITCH_INTERVAL
from lazy2dfs.estargz import WriterOptions
from lazy2dfs.estargz.footer import build_footer
from lazy2dfs.estargz.toc import PATH_MAX
from lazy2dfs.fuse.session import FuseSession
from lazy2dfs.layers.locator import Located
from lazy2dfs.layers.mounted import EstargzLayers, ResolveLimits
from lazy2dfs.remote.fetch import FetchContext
from lazy2dfs.snapshotter.labels import LayerRequest
from lazy2dfs.snapshotter.remote import NotLazyError, ResolveCancelledError
from tests.support.estargz import blob_with_toc, toc_member
from tests.support.fuse import mounted_session
from tests.support.memory import MemoryBlob, MemoryLocator


def request(n: int) -> LayerRequest:
    return LayerRequest(f"sha256:{n:064x}", "127.0.0.1:5000/t:v1", f"sha256:{n + 1000:064x}")


def hostile(toc: dict[str, Any]) -> MemoryLocator:
    """A blob that is nothing but ``toc`` (and a footer), with its honest TOC digest."""
    raw = json.dumps(toc).encode()
    return MemoryLocator(
        MemoryBlob(blob_with_toc(b"", raw)), "sha256:" + hashlib.sha256(raw).hexdigest()
    )


@pytest.fixture
def session(tmp_path: Path) -> Iterator[FuseSession]:
    with mounted_session(tmp_path) as mounted:
        yield mounted


def layers(
    root: Path, session: FuseSession, locator: MemoryLocator, max_entries: int = 1 << 20
) -> EstargzLayers:
    store = CacheStore(root / "cache", max_bytes=1 << 30)
    context = session.call_sync(lambda: FetchContext(store, deadline=10))
    return EstargzLayers(
        root, session, context, locator, background_fetch=False, max_toc_entries=max_entries
    )


def test_an_entry_twelve_thousand_directories_deep_is_refused_not_a_crash(
    tmp_path: Path, session: FuseSession
) -> None:
    deep = "a/" * 12_000 + "f"
    locator = hostile({"version": 1, "entries": [{"name": deep, "type": "reg"}]})
    with pytest.raises(NotLazyError) as refused:
        layers(tmp_path, session, locator).resolve(request(1))
    assert refused.value.reason == "bad-toc" and "PATH_MAX" in str(refused.value)


def test_names_that_imply_millions_of_directories_are_refused(
    tmp_path: Path, session: FuseSession
) -> None:
    # Each name within PATH_MAX, 2,000 directories deep and distinct: 2,000 names alone imply
    # 4 million directories.
    names = [f"{i:04d}/" + "d/" * ((PATH_MAX - 10) // 2) + "f" for i in range(2_000)]
    locator = hostile({"version": 1, "entries": [{"name": n, "type": "reg"} for n in names]})
    with pytest.raises(NotLazyError) as refused:
        layers(tmp_path, session, locator).resolve(request(2))
    assert refused.value.reason == "bad-toc" and "more than" in str(refused.value)


def test_a_chunk_claiming_128_mib_in_a_tiny_blob_is_refused_as_a_bomb(
    tmp_path: Path, session: FuseSession
) -> None:
    payload = gzip.compress(b"\0" * (128 << 20), mtime=0)  # ~128 KiB of gzip
    size = 128 << 20
    toc = {
        "version": 1,
        "entries": [
            {
                "name": "bomb.bin",
                "type": "reg",
                "size": size,
                "offset": 0,
                "chunkDigest": "sha256:" + hashlib.sha256(b"\0" * size).hexdigest(),
            },
        ],
    }
    raw = json.dumps(toc).encode()
    blob = payload + toc_member(raw) + build_footer(len(payload))
    locator = MemoryLocator(MemoryBlob(blob), "sha256:" + hashlib.sha256(raw).hexdigest())
    with pytest.raises(NotLazyError) as refused:
        layers(tmp_path, session, locator).resolve(request(3))
    assert refused.value.reason == "bad-toc" and "bomb" in str(refused.value)


@pytest.fixture
def daemon_gil() -> Iterator[None]:
    """The GIL handed over as often as the daemon has it."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


@pytest.mark.usefixtures("daemon_gil")
def test_a_large_toc_is_parsed_off_the_loop_and_others_keep_reading(
    tmp_path: Path, session: FuseSession
) -> None:
    """200,000 entries take seconds to parse: another layer's reads go on meanwhile."""
    files = {"m/w.bin": os.urandom(1 << 20)}
    honest = MemoryLocator.of_files(files, tmp_path / "honest", WriterOptions(chunk_size=1 << 18))
    remote = layers(tmp_path, session, honest)
    remote.attach(1, remote.resolve(request(4)))
    path = remote.path(1) / "m/w.bin"
    assert path.read_bytes() == files["m/w.bin"]
    big = hostile(
        {
            "version": 1,
            "entries": [{"name": f"d{i // 1000}/f{i}", "type": "reg"} for i in range(200_000)],
        }
    )
    other = layers(tmp_path / "other", session, big)
    done = threading.Event()
    waits: list[float] = []

    def read_meanwhile() -> None:
        while not done.is_set():
            start = time.monotonic()
            os.stat(path)
            with open(path, "rb") as f:
                f.read(4096)
            waits.append(time.monotonic() - start)
            time.sleep(0.01)

    reader = threading.Thread(target=read_meanwhile)
    reader.start()
    started = time.monotonic()
    try:
        other.attach(2, other.resolve(request(5)))
    finally:
        took = time.monotonic() - started
        done.set()
        reader.join(timeout=30)
    assert len(waits) > 10
    # On the loop, the whole parse would have frozen a read for all of ``took``; off it, a read
    # waits a fraction (relative, so that a busy machine slows both alike).
    assert max(waits) < took / 3, (took, sorted(waits)[-5:])
    assert len(os.listdir(other.path(2) / "d7")) == 1000


class ByLayer:
    """Locates each request with the locator of its layer digest."""

    def __init__(self, locators: dict[str, MemoryLocator]) -> None:
        self._locators = locators

    async def locate(self, request: LayerRequest) -> Located:
        return await self._locators[request.layer_digest].locate(request)

    def source(self, request: LayerRequest, size: int) -> MemoryBlob:
        return self._locators[request.layer_digest].source(request, size)


def test_toc_memory_is_bounded_over_all_layers_and_freed_on_remove(
    tmp_path: Path, session: FuseSession
) -> None:
    files = {f"f{i}": b"x" for i in range(300)}
    first, second = request(6), request(7)
    locator = ByLayer(
        {
            first.layer_digest: MemoryLocator.of_files(files, tmp_path / "a", WriterOptions()),
            second.layer_digest: MemoryLocator.of_files(
                files | {"g": b"y"}, tmp_path / "b", WriterOptions()
            ),
        }
    )
    store = CacheStore(tmp_path / "cache", max_bytes=1 << 30)
    context = session.call_sync(lambda: FetchContext(store, deadline=10))
    remote = EstargzLayers(
        tmp_path, session, context, locator, background_fetch=False, max_toc_entries=500
    )
    remote.attach(1, remote.resolve(first))
    with pytest.raises(NotLazyError) as refused:
        remote.resolve(second)  # 301 entries more do not fit next to the first's 300
    assert refused.value.reason == "toc-budget"
    remote.detach(1)  # removed: its TOC may go
    remote.attach(2, remote.resolve(second))
    assert (remote.path(2) / "g").read_bytes() == b"y"


def test_a_directory_of_60000_entries_lists_in_linear_time(
    tmp_path: Path, session: FuseSession
) -> None:
    entries = [{"name": f"big/f{i:05d}", "type": "reg"} for i in range(60_000)]
    locator = hostile({"version": 1, "entries": entries})
    remote = layers(tmp_path, session, locator)
    remote.attach(1, remote.resolve(request(8)))
    names = os.listdir(remote.path(1) / "big")
    assert len(names) == 60_000 and sorted(names) == [f"f{i:05d}" for i in range(60_000)]


def test_a_local_user_reads_no_tenants_files_even_under_a_0755_root() -> None:
    """kubelet's DirectoryOrCreate makes the root 0755; the layers stay root's."""
    root = Path(tempfile.mkdtemp(prefix="lazy2dfs-modes-", dir="/tmp"))
    os.chmod(root, 0o755)
    try:
        with mounted_session(root) as session:
            files = {"m/secret.bin": b"tenant A's weights"}
            locator = MemoryLocator.of_files(files, root / "src", WriterOptions())
            os.chmod(root / "src", 0o700)
            remote = layers(root, session, locator)
            remote.attach(1, remote.resolve(request(9)))
            assert (remote.path(1) / "m/secret.bin").read_bytes() == files["m/secret.bin"]
            cached = next((root / "cache").glob("*/data/*"))
            for path in (remote.path(1) / "m/secret.bin", cached, root / "layers"):
                probe = subprocess.run(
                    ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "cat", path],
                    capture_output=True,
                    text=True,
                    timeout=30,
                )
                assert probe.returncode != 0 and "Permission denied" in probe.stderr, path
    finally:
        subprocess.run(["umount", "-l", str(root / "fuse")], capture_output=True, timeout=30)
        shutil.rmtree(root, ignore_errors=True)


class SlowLocator:
    """A registry that sends one byte every few seconds: it never fails, it never finishes."""

    def __init__(self) -> None:
        self.started = 0
        self.cancelled = 0

    async def locate(self, request: LayerRequest) -> Located:
        self.started += 1
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            self.cancelled += 1
            raise
        raise AssertionError("unreachable")

    def source(self, request: LayerRequest, size: int) -> MemoryBlob:
        raise AssertionError("never located")


def slow_layers(root: Path, session: FuseSession, locator: SlowLocator) -> EstargzLayers:
    store = CacheStore(root / "cache", max_bytes=1 << 30)
    context = session.call_sync(lambda: FetchContext(store, deadline=10))
    limits = ResolveLimits(deadline=1.0, per_registry=2, queue_seconds=0.3)
    return EstargzLayers(root, session, context, locator, background_fetch=False, limits=limits)


def test_a_registry_that_never_finishes_costs_prepare_its_deadline_only(
    tmp_path: Path, session: FuseSession
) -> None:
    locator = SlowLocator()
    remote = slow_layers(tmp_path, session, locator)
    start = time.monotonic()
    with pytest.raises(NotLazyError) as given_up:
        remote.resolve(request(10))
    assert given_up.value.reason == "unreachable" and "fetch.resolve_deadline" in str(
        given_up.value
    )
    assert time.monotonic() - start < 10 and locator.cancelled == 1


def test_one_registry_cannot_take_every_thread(tmp_path: Path, session: FuseSession) -> None:
    """Two opens at a time per registry host; a third waits briefly, then is downloaded."""
    locator = SlowLocator()
    remote = slow_layers(tmp_path, session, locator)
    outcomes: list[str] = []

    def open_one(n: int) -> None:
        try:
            remote.resolve(request(20 + n))
        except NotLazyError as exc:
            outcomes.append(exc.reason)

    threads = [threading.Thread(target=open_one, args=(n,)) for n in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert locator.started == 2  # the others never reached the registry
    assert sorted(outcomes) == ["registry-busy"] * 3 + ["unreachable"] * 2


def test_a_cancelled_prepare_stops_opening_the_layer(tmp_path: Path, session: FuseSession) -> None:
    locator = SlowLocator()
    remote = slow_layers(tmp_path, session, locator)
    callbacks: list[Callable[[], None]] = []
    failure: list[BaseException] = []

    def prepare() -> None:
        try:
            remote.resolve(request(30), callbacks.append)
        except ResolveCancelledError as exc:
            failure.append(exc)

    thread = threading.Thread(target=prepare)
    thread.start()
    deadline = time.monotonic() + 5
    while not (callbacks and locator.started):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    callbacks[0]()  # containerd cancels the RPC: gRPC runs the callback
    thread.join(timeout=5)
    assert failure and locator.cancelled == 1
