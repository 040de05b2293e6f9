"""What tests and benchmarks left mounted under their directories, and how to detach it; the
mount table is read by the product's one parser (``lazy2dfs.mountinfo``)."""

from __future__ import annotations

from pathlib import Path

from lazy2dfs import libc
from lazy2dfs.mountinfo import MountEntry, read_mounts


def mounts_under(*roots: Path) -> list[MountEntry]:
    """Mounts at or below any of ``roots``, in mount order."""
    prefixes = [str(root.resolve()) for root in roots]
    return [
        mount
        for mount in read_mounts()
        if any(mount.mount_point == p or mount.mount_point.startswith(p + "/") for p in prefixes)
    ]


def detach_under(root: Path) -> list[str]:
    """Lazily unmounts everything at or below ``root``, last mounted first (a mount on top of
    another goes before it); returns the mounts that could not be, with the reason."""
    failed = []
    for mount in reversed(mounts_under(root)):
        try:
            libc.umount2(Path(mount.mount_point), libc.MNT_DETACH)
        except OSError as exc:
            failed.append(f"{mount.mount_point}: {exc.strerror}")
    return failed
