"""Runs the one FUSE mount: pyfuse3's trio loop on a thread of its own.

The gRPC server's threads reach into the loop with ``call``/``call_sync`` (trio.from_thread),
so all filesystem state is touched from the loop only and needs no locks.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pyfuse3
import trio
import trio.lowlevel

from lazy2dfs.errors import UnavailableError
from lazy2dfs.fuse.filesystem import LayerFilesystem
from lazy2dfs.logfmt import get_logger

log = get_logger(__name__)

T = TypeVar("T")

MNT_DETACH = 2
START_TIMEOUT = 10.0
# Kernel read-ahead on the mount. At the default 128 KiB every FUSE read is 128 KiB; at 4 MiB
# (one default chunk) sequential readers get 1 MiB requests, the most libfuse negotiates:
# 8x fewer round trips through the daemon for the same bytes.
READ_AHEAD_KB = 4096
# Workers serving FUSE requests concurrently: a read waiting on the network must not block
# lookups and cached reads behind it.
MAX_TASKS = 64


def detach_stale_mount(path: Path) -> None:
    """Detaches whatever a killed daemon left mounted at ``path`` ("transport endpoint is not
    connected" for anyone who touched it)."""
    mounted = any(
        line.split()[4] == str(path)
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
    )
    if not mounted:
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.umount2(os.fsencode(path), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        raise UnavailableError(f"cannot detach stale mount {path}: {os.strerror(err)}")
    log.warning("stale FUSE mount detached", path=path)


class FuseSession:
    """Mounts ``filesystem`` at ``mountpoint`` until ``stop``."""

    def __init__(self, filesystem: LayerFilesystem, mountpoint: Path) -> None:
        self.filesystem = filesystem
        self.mountpoint = mountpoint
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="fuse", daemon=True)

    def start(self) -> None:
        detach_stale_mount(self.mountpoint)
        self.mountpoint.mkdir(mode=0o700, parents=True, exist_ok=True)
        options = set(pyfuse3.default_options)
        options |= {"fsname=lazy2dfs", "subtype=lazy2dfs", "ro", "allow_other"}
        pyfuse3.init(self.filesystem, str(self.mountpoint), options)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT) or self._error is not None:
            raise UnavailableError(f"FUSE loop did not start: {self._error!r}")
        self._raise_read_ahead()
        log.info("fuse mounted", path=self.mountpoint)

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
            await pyfuse3.main(min_tasks=2, max_tasks=MAX_TASKS)
            nursery.cancel_scope.cancel()

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

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Runs async ``fn`` in the FUSE loop from another thread and returns its result."""
        return trio.from_thread.run(fn, *args, trio_token=self._token)

    def call_sync(self, fn: Callable[..., T], *args: Any) -> T:
        return trio.from_thread.run_sync(fn, *args, trio_token=self._token)

    @property
    def running(self) -> bool:
        return self._token is not None and self._thread.is_alive()

    def stop(self) -> None:
        if not self._thread.ident:
            return  # never started
        if self.running:
            trio.from_thread.run_sync(pyfuse3.terminate, trio_token=self._token)
            self._thread.join(timeout=30)
        pyfuse3.close(unmount=True)
        log.info("fuse unmounted", path=self.mountpoint)
