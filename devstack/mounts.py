"""What is mounted in this mount namespace, from ``/proc/self/mountinfo``: for tests and
benchmarks that check what a run left mounted under its directories, and detach it.

The kernel writes a space, tab, newline or backslash in a path as an octal escape (``\\040``);
the mount points here are decoded, so a directory with a space in its name is found too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from lazy2dfs import libc

MOUNTINFO = Path("/proc/self/mountinfo")
_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class Mount:
    point: str
    fs_type: str  # "overlay", "fuse.lazy2dfs" …


def _decode(field: str) -> str:
    return _ESCAPE.sub(lambda escape: chr(int(escape.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[Mount]:
    found = []
    for line in text.splitlines():
        fields = line.split()
        # A variable number of optional fields ends with a lone "-"; the type follows it.
        found.append(Mount(_decode(fields[4]), fields[fields.index("-") + 1]))
    return found


def mounts() -> list[Mount]:
    """Every mount, in mount order."""
    return parse_mountinfo(MOUNTINFO.read_text(errors="surrogateescape"))


def mounts_under(*roots: Path) -> list[Mount]:
    """Mounts at or below any of ``roots``, in mount order."""
    prefixes = [str(root.resolve()) for root in roots]
    return [
        mount
        for mount in mounts()
        if any(mount.point == p or mount.point.startswith(p + "/") for p in prefixes)
    ]


def detach_under(root: Path) -> list[str]:
    """Lazily unmounts everything at or below ``root``, last mounted first (a mount on top of
    another goes before it); returns the mounts that could not be, with the reason."""
    failed = []
    for mount in reversed(mounts_under(root)):
        try:
            libc.umount2(Path(mount.point), libc.MNT_DETACH)
        except OSError as exc:
            failed.append(f"{mount.point}: {exc.strerror}")
    return failed
