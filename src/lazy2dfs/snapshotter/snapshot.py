"""What a snapshot is, in containerd's terms: kind, info and usage."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Kind(enum.IntEnum):
    """Values match containerd's wire enum, so they convert with a plain int()."""

    UNKNOWN = 0
    VIEW = 1
    ACTIVE = 2
    COMMITTED = 3

    @property
    def filter_name(self) -> str:
        """The spelling containerd's filters use: ``kind==committed``."""
        return self.name.lower()


@dataclass(frozen=True)
class Info:
    """A snapshot as containerd sees it. Times are nanoseconds since the epoch (UTC)."""

    name: str
    parent: str
    kind: Kind
    created_ns: int
    updated_ns: int
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Usage:
    """Disk usage of one snapshot's own directory, parents excluded."""

    size: int = 0
    inodes: int = 0
