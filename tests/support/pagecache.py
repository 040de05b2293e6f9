"""What the page cache holds of a file, asked without reading it (``mincore``)."""

import ctypes
import mmap
import os
import time
from pathlib import Path

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_MAP_FAILED = ctypes.c_void_p(-1).value


def missing_pages(path: Path) -> int:
    """Pages of the file at ``path`` that the page cache does not hold."""
    size = path.stat().st_size
    if size == 0:
        return 0
    pages = -(-size // mmap.PAGESIZE)
    fd = os.open(path, os.O_RDONLY)
    try:
        address = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if address in (None, _MAP_FAILED):
            raise OSError(ctypes.get_errno(), f"mmap {path}")
        try:
            resident = (ctypes.c_ubyte * pages)()
            if _libc.mincore(address, size, resident) != 0:
                raise OSError(ctypes.get_errno(), f"mincore {path}")
            return sum(1 for flag in resident if not flag & 1)
        finally:
            _libc.munmap(address, size)
    finally:
        os.close(fd)


def wait_until_cached(paths: list[Path], timeout: float, allowed: int = 0) -> int:
    """Waits (bounded) until the page cache holds every page of ``paths`` but ``allowed``;
    returns the pages still missing then."""
    deadline = time.monotonic() + timeout
    while (missing := sum(missing_pages(p) for p in paths)) > allowed and (
        time.monotonic() < deadline
    ):
        time.sleep(0.05)
    return missing
