"""A layer's directory tree, built once from its table of contents and never changed.

What overlayfs expects of a lower directory is decided here, not at read time: whiteout files
(``.wh.<name>``) become 0:0 character devices named ``<name>``, ``.wh..wh..opq`` marks its
directory opaque (``trusted.overlay.opaque=y``), landmark files vanish, hard links share one
node, and names that would climb out of the layer are refused.

Inode numbers are ``(slot << 32) | index``: a layer's slot is persisted by the daemon and the
index follows TOC order, so a restarted daemon hands the kernel the same numbers.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field

from lazy2dfs.errors import IntegrityError
from lazy2dfs.estargz.toc import clean_name

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = b"trusted.overlay.opaque"
LANDMARKS = frozenset({".prefetch.landmark", ".no.prefetch.landmark"})
SLOT_SHIFT = 32
MAX_ENTRIES = (1 << SLOT_SHIFT) - 2

_TYPE_BITS = {
    "dir": stat.S_IFDIR,
    "reg": stat.S_IFREG,
    "symlink": stat.S_IFLNK,
    "char": stat.S_IFCHR,
    "block": stat.S_IFBLK,
    "fifo": stat.S_IFIFO,
}


@dataclass(frozen=True)
class Entry:
    """One TOC entry, reduced to what the filesystem shows. ``key`` names a regular file to
    the layer's reader (for eStargz: its TOC path); the tree never looks inside it."""

    name: str
    type: str  # dir reg symlink hardlink char block fifo
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    size: int = 0
    mtime_ns: int = 0
    link_name: str = ""
    dev_major: int = 0
    dev_minor: int = 0
    xattrs: dict[bytes, bytes] = field(default_factory=dict)
    key: str = ""


@dataclass(slots=True)
class Node:
    inode: int
    mode: int  # type and permission bits
    uid: int
    gid: int
    size: int
    mtime_ns: int
    rdev: int = 0
    nlink: int = 1
    target: bytes = b""
    xattrs: dict[bytes, bytes] = field(default_factory=dict)
    children: dict[bytes, Node] = field(default_factory=dict)
    key: str = ""  # a regular file's name to the reader
    _listing: list[tuple[bytes, Node]] | None = field(default=None, repr=False)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    def sorted_children(self) -> list[tuple[bytes, Node]]:
        """Listing order; readdir offsets index into it, so it must not change. Sorted once:
        the tree never changes, and a 60,000-entry directory is listed in many readdir calls."""
        if self._listing is None:
            self._listing = sorted(self.children.items())
        return self._listing


class LayerTree:
    """The nodes of one layer, addressable by inode."""

    def __init__(self, slot: int, entries: Iterable[Entry], root_mode: int = 0o755) -> None:
        if slot <= 0:
            raise ValueError("slot 0 is the mount's own root")
        self.slot = slot
        self._next = 1
        self.nodes: dict[int, Node] = {}
        self.root = self._new(stat.S_IFDIR | root_mode, 0, 0, 0, 0)
        by_path: dict[str, Node] = {"": self.root}
        hardlinks: list[tuple[str, str]] = []
        for entry in entries:
            name = clean_name(entry.name)
            if not name:
                self._apply(self.root, entry)
                continue
            parent_path, base = posixpath.split(name)
            if base in LANDMARKS and not parent_path:
                continue
            parent = self._directory(by_path, parent_path)
            if base == OPAQUE_MARKER:
                parent.xattrs[OPAQUE_XATTR] = b"y"
                continue
            if base.startswith(WHITEOUT_PREFIX):
                base = base.removeprefix(WHITEOUT_PREFIX)
                node = self._new(stat.S_IFCHR, 0, 0, 0, entry.mtime_ns)
            elif entry.type == "hardlink":
                hardlinks.append((name, clean_name(entry.link_name)))
                continue
            elif entry.type == "dir" and name in by_path:
                self._apply(by_path[name], entry)  # an implied directory, now described
                continue
            else:
                node = self._from_entry(entry)
            parent.children[base.encode()] = node
            by_path[name] = node
        for name, target in hardlinks:
            original = by_path.get(target)
            if original is None or original.is_dir:
                raise IntegrityError(f"hard link {name!r} points to missing {target!r}")
            parent_path, base = posixpath.split(name)
            self._directory(by_path, parent_path).children[base.encode()] = original
            original.nlink += 1
            by_path[name] = original
        self._count_subdirectories()
        self._by_key = {node.key: node.inode for node in by_path.values() if node.key}

    def _new(self, mode: int, uid: int, gid: int, size: int, mtime_ns: int) -> Node:
        if self._next > MAX_ENTRIES:
            raise IntegrityError(f"layer has more than {MAX_ENTRIES} entries")
        node = Node(
            inode=(self.slot << SLOT_SHIFT) | self._next,
            mode=mode,
            uid=uid,
            gid=gid,
            size=size,
            mtime_ns=mtime_ns,
        )
        self.nodes[node.inode] = node
        self._next += 1
        return node

    def _from_entry(self, entry: Entry) -> Node:
        kind = _TYPE_BITS.get(entry.type)
        if kind is None:
            raise IntegrityError(f"TOC entry {entry.name!r} has unknown type {entry.type!r}")
        size = entry.size if entry.type == "reg" else 0
        node = self._new(kind | (entry.mode & 0o7777), entry.uid, entry.gid, size, entry.mtime_ns)
        node.xattrs = dict(entry.xattrs)
        node.key = entry.key
        if entry.type == "symlink":
            node.target = entry.link_name.encode()
            node.size = len(node.target)
        elif entry.type in ("char", "block"):
            node.rdev = os.makedev(entry.dev_major, entry.dev_minor)
        return node

    def _apply(self, node: Node, entry: Entry) -> None:
        if entry.type != "dir":
            raise IntegrityError(f"TOC entry {entry.name!r} replaces a directory")
        node.mode = stat.S_IFDIR | (entry.mode & 0o7777)
        node.uid, node.gid, node.mtime_ns = entry.uid, entry.gid, entry.mtime_ns
        node.xattrs.update(entry.xattrs)

    def _directory(self, by_path: dict[str, Node], path: str) -> Node:
        """The directory at ``path``, created (0755, as tar does) where the TOC implies it.
        Iterative: a hostile name thousands of directories deep must not exhaust the stack."""
        missing: list[str] = []
        probe = path
        while probe not in by_path:
            missing.append(probe)
            probe = posixpath.dirname(probe)
        node = by_path[probe]
        for directory in reversed(missing):
            if not node.is_dir:
                break
            child = self._new(stat.S_IFDIR | 0o755, 0, 0, 0, 0)
            node.children[posixpath.basename(directory).encode()] = child
            by_path[directory] = child
            node = child
        if not node.is_dir:
            raise IntegrityError(f"TOC entry {path!r} is used as a directory but is not one")
        return node

    def _count_subdirectories(self) -> None:
        for node in self.nodes.values():
            if node.is_dir:
                node.nlink = 2 + sum(1 for child in node.children.values() if child.is_dir)

    def lookup(self, inode: int) -> Node | None:
        return self.nodes.get(inode)

    def inode_of(self, key: str) -> int | None:
        """The inode of the regular file the reader knows as ``key``."""
        return self._by_key.get(key)

    def file_inodes(self) -> list[int]:
        """The inodes of the layer's regular files."""
        return list(self._by_key.values())


def slot_of(inode: int) -> int:
    return inode >> SLOT_SHIFT
