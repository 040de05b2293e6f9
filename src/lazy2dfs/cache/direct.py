"""Reads and writes of backing files that leave the page cache to the FUSE files.

A cold load would otherwise put every byte of a model in the page cache twice: the FUSE
file's pages, which the model server maps and which every container shares, and the backing
file's, which nothing needs once the FUSE pages are filled. Each fresh page costs more than
the copy into it: writing 1 GiB into new page cache took 0.85-2.5 CPU-s on the benchmark
machine (a VM whose freed memory goes back to the host), with ``O_DIRECT`` 0.04 CPU-s, plus
0.06 to stage the bytes. A layer's local tree is then read through the page cache as any file.

``O_DIRECT`` needs offsets, lengths and memory aligned to the block: a range goes to disk as
its aligned middle, staged through page-aligned buffers, and its unaligned ends through the
page cache. Chunks of a file meet inside a page that both write through the page cache, so no
page is ever written both ways (the kernel flushes such a page before a direct read of it). A
file system that refuses ``O_DIRECT`` gets plain reads and writes.
"""

from __future__ import annotations

import errno
import mmap
import os
import threading
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

ALIGN = 4096  # a page: the block of every file system a cache lives on, and mmap's alignment
STAGE_BYTES = 1024 * 1024  # one direct read or write: ~0.6 ms here; a FUSE read is at most 1 MiB
_KEPT_STAGES = 4  # staging buffers kept for reuse; more are made while more threads need one


@dataclass(frozen=True)
class Descriptors:
    """One backing file, opened through the page cache and, where allowed, around it."""

    buffered: int
    direct: int | None

    def close(self) -> None:
        os.close(self.buffered)
        if self.direct is not None:
            os.close(self.direct)

    def dup(self) -> Descriptors:
        return Descriptors(
            os.dup(self.buffered), None if self.direct is None else os.dup(self.direct)
        )


def open_direct(path: str | os.PathLike[str]) -> int | None:
    """An ``O_DIRECT`` descriptor of the backing file at ``path``; None where the file system
    refuses it, at the open or at a first aligned read (some accept the flag and refuse the
    I/O: every write would then fail, and the reads waiting for it)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_DIRECT | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return None
        raise
    try:
        with _stage() as stage, memoryview(stage) as view:
            os.preadv(fd, [view[:ALIGN]], 0)
    except OSError as exc:
        os.close(fd)
        if exc.errno == errno.EINVAL:
            return None
        raise
    return fd


def write(files: Descriptors, data: bytes | memoryview, offset: int) -> None:
    """Writes all of ``data`` at ``offset``; raises ``OSError`` (ENOSPC on a short write)."""
    view = memoryview(data).cast("B")
    end = offset + len(view)
    low, high = _round_up(offset), end // ALIGN * ALIGN
    if files.direct is None or high <= low:
        _write_all(files.buffered, view, offset)
        return
    _write_all(files.buffered, view[: low - offset], offset)
    with _stage() as stage:
        for start in range(low, high, STAGE_BYTES):
            count = min(STAGE_BYTES, high - start)
            stage[:count] = view[start - offset : start - offset + count]
            _write_all(files.direct, memoryview(stage)[:count], start)
    _write_all(files.buffered, view[high - offset :], high)


def read(files: Descriptors, size: int, offset: int) -> bytes:
    """Up to ``size`` bytes at ``offset`` (fewer only at the end of the file)."""
    if files.direct is None:
        return os.pread(files.buffered, size, offset)
    return b"".join([bytes(piece) for piece in pieces(files, size, offset)])


def pieces(files: Descriptors, size: int, offset: int) -> Generator[memoryview, None, None]:
    """The bytes ``read`` gives, in pieces that are each valid only until the next is taken
    (then released: using one later raises): for a reader that hashes or copies them, without
    a buffer of their own."""
    if files.direct is None:
        yield memoryview(os.pread(files.buffered, size, offset))
        return
    end = offset + size
    with _stage() as stage, memoryview(stage) as view:
        for start in range(offset // ALIGN * ALIGN, _round_up(end), STAGE_BYTES):
            count = min(STAGE_BYTES, _round_up(end) - start)
            got = os.preadv(files.direct, [view[:count]], start)
            first, last = max(offset, start), min(end, start + got)
            if last > first:
                with view[first - start : last - start] as piece:
                    yield piece
            if got < count:
                return


def _write_all(fd: int, view: memoryview, offset: int) -> None:
    if not view:
        return
    written = os.pwrite(fd, view, offset)
    if written != len(view):
        raise OSError(errno.ENOSPC, "short write")


def _round_up(offset: int) -> int:
    return -(-offset // ALIGN) * ALIGN


_stages: list[mmap.mmap] = []
_stages_lock = threading.Lock()


@contextmanager
def _stage() -> Iterator[mmap.mmap]:
    """A page-aligned buffer of ``STAGE_BYTES`` for this thread's call, reused across calls:
    a fresh one would cost the fresh pages this module is here to save."""
    with _stages_lock:
        stage = _stages.pop() if _stages else mmap.mmap(-1, STAGE_BYTES)
    try:
        yield stage
    finally:
        with _stages_lock:
            if len(_stages) < _KEPT_STAGES:
                _stages.append(stage)
