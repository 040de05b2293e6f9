"""``lazy2dfs serve``: the process containerd talks to.

Life cycle: lock the root (one daemon per root), open the store, recover, bind the gRPC server
on a temporary socket name and rename it into place once it serves — so containerd never sees
a socket that refuses calls — then wait for SIGTERM/SIGINT. On a signal: remove the socket (no
new connections), let calls in flight finish, release everything, exit 0.
"""

from __future__ import annotations

import fcntl
import functools
import os
import signal
import socket
import sys
import threading
from concurrent import futures
from pathlib import Path
from types import FrameType

import grpc

from lazy2dfs import libc
from lazy2dfs.api import snapshots_pb2_grpc
from lazy2dfs.cache.store import CacheStore
from lazy2dfs.config import Config
from lazy2dfs.errors import FailedPreconditionError, UnavailableError
from lazy2dfs.fuse.filesystem import LayerFilesystem
from lazy2dfs.fuse.session import FuseSession, Keeper
from lazy2dfs.layers.locator import RegistryLocator
from lazy2dfs.layers.mounted import EstargzLayers, ResolveLimits
from lazy2dfs.logfmt import get_logger
from lazy2dfs.observability import DaemonParts, Observability
from lazy2dfs.registry_client import RegistryClient, RetryPolicy, SpillArea
from lazy2dfs.remote.fetch import FetchContext
from lazy2dfs.snapshotter.mounts import OverlayFeatures
from lazy2dfs.snapshotter.overlay import OverlaySnapshotter
from lazy2dfs.snapshotter.service import SnapshotsService
from lazy2dfs.snapshotter.store import Store
from lazy2dfs.tdfs.computed import ComputedImages
from lazy2dfs.tdfs.mirror import PartitionMirror

log = get_logger(__name__)

# Calls in flight get this long to finish after a stop signal.
SHUTDOWN_GRACE_SECONDS = 30.0
GRPC_WORKERS = 64
SIGNAL_POLL_SECONDS = 0.2
# Python hands the GIL over every 5 ms by default; a short call (Mounts, Stat) waiting behind
# busy threads then waits whole intervals. 0.5 ms cut Mounts' p99 under 20 pulls (make bench).
GIL_SWITCH_INTERVAL = 0.0005
# The longest pause between two tries of a range read: a registry back from a restart is
# noticed within this long.
RANGE_RETRY_MAX_DELAY = 2.0


class RootLock:
    """An exclusive flock on ``<root>/lazy2dfs.lock``, held for the daemon's lifetime."""

    def __init__(self, root: Path) -> None:
        self.path = root / "lazy2dfs.lock"
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(self._fd)
            raise FailedPreconditionError(
                f"another lazy2dfs daemon (pid {holder}) is serving root {root}:"
                " stop it first, or start this one with a different --root"
            ) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        os.close(self._fd)


def notify_systemd(state: str) -> None:
    """sd_notify(3) without libsystemd: a datagram to $NOTIFY_SOCKET, if systemd set one."""
    target = os.environ.get("NOTIFY_SOCKET")
    if not target:
        return
    if target.startswith("@"):
        target = "\0" + target[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(target)
        sock.sendall(state.encode())


def _set_allocator_thresholds() -> None:
    """Decoded segments are ~4 MiB buffers that come and go by the thousand. Each given its own
    mapping was faulted in page by page and returned on free, and a fresh page is dear here (a
    VM whose freed memory goes back to the host: 0.75 CPU-s per GiB of new pages): served from
    glibc's heap instead (mappings from 16 MiB), a cold 1 GiB load took 4.7 daemon CPU-s, not
    5.4. A heap per thread let every worker thread keep its own freed buffers (peak RSS 402
    MiB); two heaps in all, 301 MiB; one, and the bounds on bytes in flight and kept, 244 MiB
    loading 4 GiB (goal: 250), at the same speed. Socket reads and FUSE replies (up to 1 MiB)
    stay on the heap and are reused too: at a 128 KiB threshold they were 45 % of the
    daemon's CPU in a cold load. Freed heap beyond 32 MiB is returned to the system."""
    libc.mallopt(libc.M_MMAP_THRESHOLD, 16 * 1024 * 1024)
    libc.mallopt(libc.M_TRIM_THRESHOLD, 32 * 1024 * 1024)
    libc.mallopt(libc.M_ARENA_MAX, 1)


class Daemon:
    def __init__(self, config: Config) -> None:
        self.config = config
        self._stop = threading.Event()

    def _bind(self, server: grpc.Server) -> Path:
        address = self.config.address
        address.parent.mkdir(mode=0o711, parents=True, exist_ok=True)
        staging = address.with_name(f".{address.name}.{os.getpid()}")
        staging.unlink(missing_ok=True)
        if server.add_insecure_port(f"unix:{staging}") == 0:
            raise UnavailableError(f"cannot listen on {staging}: check the directory's permissions")
        return staging

    def run(self) -> int:
        sys.setswitchinterval(GIL_SWITCH_INTERVAL)
        _set_allocator_thresholds()
        # Directories and files we create get their modes from us, not from whoever started us.
        os.umask(0o022)
        # Before any thread starts or the socket appears: a stop signal at any time is handled.
        self._install_signal_handlers()
        root = self.config.root
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock = RootLock(root)
        # A socket left by a killed daemon would accept no calls; remove it until we serve.
        self.config.address.unlink(missing_ok=True)
        store = Store(root / "metadata.db")
        session = FuseSession(
            LayerFilesystem(),
            Keeper(
                root,
                self.config.fuse.restart_grace_seconds,
                external=self.config.fuse.keeper == "external",
            ),
            fill_page_cache=self.config.fuse.fill_page_cache,
        )
        settings = self.config.registry
        own_mirror = [self.config.mirror_address] if self.config.mirror_address else []
        registry = RegistryClient(
            hosts_dir=settings.hosts_dir,
            plain_http=settings.plain_http,
            spill=SpillArea(root / "spill", settings.spill_max_bytes, settings.spill_idle_seconds),
            # A read retries (with backoff) for as long as it may wait, so that a registry
            # restarting costs readers time, not EIO.
            range_retry=RetryPolicy(
                attempts=None,
                max_delay=RANGE_RETRY_MAX_DELAY,
                budget=self.config.fetch.deadline_seconds,
            ),
            skip_hosts=own_mirror,
            mirror_warm_seconds=settings.mirror_warm_seconds,
        )
        computed = ComputedImages()
        server: grpc.Server | None = None
        cache: CacheStore | None = None
        observability: Observability | None = None
        mirror: PartitionMirror | None = None
        try:
            session.start()
            cache = CacheStore(root / "cache", self.config.cache.max_bytes)
            context = session.call_sync(
                functools.partial(FetchContext, cache, deadline=self.config.fetch.deadline_seconds)
            )
            session.call_sync(session.spawn, "record written segments", context.record_written)
            layers = EstargzLayers(
                root,
                session,
                context,
                RegistryLocator(registry, computed),
                self.config.fetch.background,
                self.config.fetch.max_toc_entries,
                ResolveLimits(
                    deadline=self.config.fetch.resolve_deadline_seconds,
                    per_registry=self.config.fetch.resolves_per_registry,
                    verify_deadline=self.config.fetch.verify_deadline_seconds,
                ),
            )
            snapshotter = OverlaySnapshotter(root, store, OverlayFeatures.detect(), layers)
            # Layers are restored: requests that waited for us through a restart find them.
            session.mount()
            server = grpc.server(futures.ThreadPoolExecutor(max_workers=GRPC_WORKERS))
            snapshots_pb2_grpc.add_SnapshotsServicer_to_server(
                SnapshotsService(snapshotter), server
            )
            staging = self._bind(server)
            server.start()
            parts = DaemonParts(self.config, session, layers, cache, snapshotter, registry)
            observability = Observability(parts).start()
            if self.config.mirror_address is not None:
                mirror = PartitionMirror(self.config, computed).start()
            os.chmod(staging, 0o660)
            if os.geteuid() == 0:
                os.chown(staging, 0, 0)
            os.replace(staging, self.config.address)
            log.info(
                "serving",
                address=self.config.address,
                root=root,
                control=self.config.control_address,
                metrics=self.config.metrics_address or "off",
                mirror=self.config.mirror_address or "off",
                pid=os.getpid(),
            )
            notify_systemd("READY=1")
            # Polled: a signal the kernel delivers to another thread (gRPC, FUSE) only sets a
            # flag for the main thread, which a wait without timeout would never look at.
            while not self._stop.wait(SIGNAL_POLL_SECONDS):
                pass
            notify_systemd("STOPPING=1")
            log.info("stopping", grace_seconds=SHUTDOWN_GRACE_SECONDS)
        finally:
            self.config.address.unlink(missing_ok=True)
            if server is not None:
                server.stop(SHUTDOWN_GRACE_SECONDS).wait()
            if observability is not None:
                observability.stop()
            if mirror is not None:
                mirror.stop()
            if session.running:
                session.call(registry.aclose)
            session.stop()
            if cache is not None:
                cache.flush()
            store.close()
            lock.release()
        log.info("stopped")
        return 0

    def _install_signal_handlers(self) -> None:
        def on_signal(signum: int, frame: FrameType | None) -> None:
            log.info("signal received", signal=signal.Signals(signum).name)
            self._stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
