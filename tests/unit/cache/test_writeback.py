"""The cache's writes handed to the disk at once, at the idle I/O class, and the window of
written ranges behind which their pages may go."""

import os
import threading
import time
from pathlib import Path

from benchmarks.model_load import cache_stat
from lazy2dfs import libc
from lazy2dfs.cache.writeback import WritebackWindow, WrittenRange

MIB = 1024 * 1024


def test_written_bytes_reach_the_disk_without_waiting_for_the_kernels_writeback(
    tmp_path: Path,
) -> None:
    """Without it they would stay dirty for the kernel's 30 s (vm.dirty_expire_centisecs)."""
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.pwrite(fd, os.urandom(4 * MIB), 0)
        assert WritebackWindow(8 * MIB).written(fd, WrittenRange(0, 0, 4 * MIB)) == []
        deadline = time.monotonic() + 20
        while (stat := cache_stat(fd)).nr_dirty + stat.nr_writeback and time.monotonic() < deadline:
            time.sleep(0.02)
        assert stat.nr_dirty == stat.nr_writeback == 0
        assert stat.nr_cache == 4 * MIB // os.sysconf("SC_PAGE_SIZE")  # dropping is the caller's
    finally:
        os.close(fd)


def test_ranges_fall_out_of_the_window_oldest_first(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o600)
    window = WritebackWindow(3 * MIB)
    try:
        ranges = [WrittenRange(n % 2, n * MIB, MIB) for n in range(5)]
        out = [window.written(fd, r) for r in ranges]
    finally:
        os.close(fd)
    assert out == [[], [], [], [ranges[0]], [ranges[1]]]


def test_the_idle_io_class_is_the_calling_threads_and_given_back() -> None:
    """Other threads, such as the FUSE loop's, keep theirs."""
    before = libc.io_priority()
    assert before is not None  # x86_64 or aarch64
    inside, looked = threading.Event(), threading.Event()
    seen: list[int | None] = []

    def other_thread() -> None:
        inside.wait(10)
        seen.append(libc.io_priority())
        looked.set()

    other = threading.Thread(target=other_thread)
    other.start()
    with libc.idle_io_priority():
        seen.append(libc.io_priority())
        inside.set()
        looked.wait(10)
    other.join()
    assert seen[0] is not None and seen[0] >> 13 == libc.IOPRIO_CLASS_IDLE
    assert seen[1] == before
    assert libc.io_priority() == before
