"""The mount table of this process's mount namespace, read from ``/proc/self/mountinfo``.

One parser for every part that asks what is mounted (the FUSE session's stale-mount check, the
health check, containers' overlays on the FUSE mount). The kernel writes space, tab, newline
and backslash in paths as octal escapes (``\\040``); they are decoded here, so a root with a
space in its path is found like any other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

MOUNTINFO = Path("/proc/self/mountinfo")
_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class MountEntry:
    mount_point: str
    fs_type: str
    source: str
    super_options: tuple[str, ...]


def unescape(field: str) -> str:
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def read_mounts(table: Path = MOUNTINFO) -> list[MountEntry]:
    entries = []
    for line in table.read_text(errors="surrogateescape").splitlines():
        fields = line.split(" ")
        tail = fields[fields.index("-") + 1 :]
        entries.append(
            MountEntry(
                mount_point=unescape(fields[4]),
                fs_type=tail[0],
                source=unescape(tail[1]),
                super_options=tuple(unescape(o) for o in tail[2].split(",")),
            )
        )
    return entries


def is_mounted(path: Path) -> bool:
    """Whether something is mounted at ``path`` in this mount namespace."""
    return any(entry.mount_point == str(path) for entry in read_mounts())
