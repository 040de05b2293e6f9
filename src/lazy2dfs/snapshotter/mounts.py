"""The mounts a snapshot's user performs, shaped exactly like containerd's overlayfs snapshotter.

containerd (or ctr, or the CRI plugin) mounts what we return; we never mount a snapshot
ourselves. Keeping the shapes identical to the built-in snapshotter means every tool that
understands overlayfs snapshots (``ctr snapshots mounts``, nerdctl, buildkit) understands ours.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lazy2dfs.snapshotter.snapshot import Kind


@dataclass(frozen=True)
class Mount:
    type: str
    source: str
    options: tuple[str, ...]
    target: str = ""


@dataclass(frozen=True)
class OverlayFeatures:
    """Options this kernel needs on every overlay mount."""

    index_off: bool
    userxattr: bool

    @classmethod
    def detect(cls) -> OverlayFeatures:
        """``index=off`` where the kernel has the index feature (it refuses to reuse an upper
        directory otherwise); ``userxattr`` inside a user namespace, where trusted.* xattrs
        are out of reach (kernel 5.11 and later)."""
        return cls(
            index_off=Path("/sys/module/overlay/parameters/index").exists(),
            userxattr=_in_user_namespace() and _kernel_at_least(5, 11),
        )


def _in_user_namespace() -> bool:
    try:
        fields = Path("/proc/self/uid_map").read_text().split()
    except OSError:
        return False
    return fields[:3] != ["0", "0", "4294967295"]


def _kernel_at_least(major: int, minor: int) -> bool:
    parts = platform.release().split(".")
    try:
        return (int(parts[0]), int(parts[1].split("-")[0])) >= (major, minor)
    except (IndexError, ValueError):
        return False


def snapshot_mounts(
    kind: Kind,
    upper: Path,
    work: Path,
    lowers: Sequence[Path],
    features: OverlayFeatures,
) -> list[Mount]:
    """Mounts for a snapshot whose own directory is ``upper`` and whose parents' directories
    are ``lowers``, nearest parent first."""
    if not lowers:
        mode = "ro" if kind == Kind.VIEW else "rw"
        return [Mount(type="bind", source=str(upper), options=(mode, "rbind"))]
    options: list[str] = []
    if features.index_off:
        options.append("index=off")
    if features.userxattr:
        options.append("userxattr")
    if kind == Kind.ACTIVE:
        options += [f"workdir={work}", f"upperdir={upper}"]
    elif len(lowers) == 1:
        return [Mount(type="bind", source=str(lowers[0]), options=("ro", "rbind"))]
    options.append("lowerdir=" + ":".join(os.fspath(p) for p in lowers))
    return [Mount(type="overlay", source="overlay", options=tuple(options))]
