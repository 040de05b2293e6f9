"""The few libc calls Python's ``os`` module lacks: mount(2), umount2(2), mallopt(3).

The library is loaded once, at import: ``ctypes.util.find_library`` runs ``ldconfig`` in a
child process, and a child that inherits a descriptor on a FUSE mount whose daemon is away
blocks on closing it — the moment lazy2dfs unmounts is the worst moment for that.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

_LIBC = ctypes.CDLL("libc.so.6", use_errno=True)

MNT_DETACH = 2
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8


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
