"""The few libc calls Python's ``os`` module lacks: mount(2), umount2(2), mallopt(3),
sync_file_range(2), ioprio_get(2) and ioprio_set(2).

The library is loaded once, at import: ``ctypes.util.find_library`` runs ``ldconfig`` in a
child process, and a child that inherits a descriptor on a FUSE mount whose daemon is away
blocks on closing it — the moment lazy2dfs unmounts is the worst moment for that.
"""

from __future__ import annotations

import ctypes
import os
import platform
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_LIBC = ctypes.CDLL("libc.so.6", use_errno=True)
_LIBC.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]

MNT_DETACH = 2
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
SYNC_FILE_RANGE_WRITE = 2
# ioprio_set(2) and ioprio_get(2) have no libc wrapper; their numbers differ by architecture.
# Looked up once: the cache's writer threads ask for every chunk they write.
_IOPRIO_SET_GET = {"x86_64": (251, 252), "aarch64": (30, 31)}.get(platform.machine())
_IOPRIO_WHO_PROCESS = 1  # one thread, by its kernel thread ID
IOPRIO_CLASS_IDLE = 3
_IOPRIO_CLASS_SHIFT = 13


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(source: str, target: Path, fstype: str, flags: int, data: str) -> None:
    _check(
        _LIBC.mount(source.encode(), os.fsencode(target), fstype.encode(), flags, data.encode()),
        f"mount {fstype} at {target}",
    )


def umount2(target: Path, flags: int = 0) -> None:
    _check(_LIBC.umount2(os.fsencode(target), flags), f"umount {target}")


def mallopt(param: int, value: int) -> None:
    _LIBC.mallopt(param, value)


def start_writeback(fd: int, offset: int, count: int) -> None:
    """Starts writing the dirty pages of a range of ``fd`` to the disk; does not wait for it."""
    if _LIBC.sync_file_range(fd, offset, count, SYNC_FILE_RANGE_WRITE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"sync_file_range: {os.strerror(err)}")


def io_priority() -> int | None:
    """The calling thread's I/O priority (class and level, as ioprio_get(2) gives them); None
    where the call is unknown or refused."""
    if _IOPRIO_SET_GET is None:
        return None
    value = int(_LIBC.syscall(_IOPRIO_SET_GET[1], _IOPRIO_WHO_PROCESS, threading.get_native_id()))
    return None if value < 0 else value


def _set_io_priority(value: int) -> bool:
    if _IOPRIO_SET_GET is None:
        return False
    thread = threading.get_native_id()
    return int(_LIBC.syscall(_IOPRIO_SET_GET[0], _IOPRIO_WHO_PROCESS, thread, value)) == 0


@contextmanager
def idle_io_priority() -> Iterator[None]:
    """The calling thread's I/O at the idle class for the block, then at the priority it had:
    the disk serves it only when no other I/O waits (with mq-deadline or BFQ; without a
    scheduler, as any other). Where the calls are unknown or refused, the priority is left
    alone."""
    before = io_priority()
    if before is None or not _set_io_priority(IOPRIO_CLASS_IDLE << _IOPRIO_CLASS_SHIFT):
        yield
        return
    try:
        yield
    finally:
        _set_io_priority(before)
