"""A complete layer's files as a real directory tree, for overlayfs to use as a lower
directory instead of the FUSE mount: a warm start then costs what overlayfs costs.

The tree written is the FUSE tree of the layer (``fuse.tree.LayerTree``), so a container sees
the same files before and after the switch: whiteouts as 0:0 character devices, opaque
directories by ``trusted.overlay.opaque``, landmarks hidden, owners, modes, xattrs and times as
the TOC gives them. Regular files are hard links of the cache's backing files (no copy); hard
links of the layer are more links of the same backing file.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

from lazy2dfs.fuse.tree import LayerTree, Node


def write_tree(tree: LayerTree, backing: Callable[[str], Path | None], target: Path) -> None:
    """Writes ``tree`` to ``target`` (which must not exist) durably; ``backing(key)`` is the
    backing file of a regular file, None for an empty one."""
    staging = target.with_name(f".{target.name}.new")
    shutil.rmtree(staging, ignore_errors=True)
    os.mkdir(staging, 0o700)
    first_path: dict[int, bytes] = {}  # inode → where it was written first (hard links)
    directories: list[tuple[Node, bytes]] = [(tree.root, os.fsencode(staging))]
    stack = [directories[0]]
    while stack:
        parent, parent_path = stack.pop()
        for name, node in parent.children.items():
            path = os.path.join(parent_path, name)
            if node.inode in first_path:
                os.link(first_path[node.inode], path)
                continue
            first_path[node.inode] = path
            kind = stat.S_IFMT(node.mode)
            if kind == stat.S_IFDIR:
                os.mkdir(path, 0o700)
                directories.append((node, path))
                stack.append((node, path))
                continue
            if kind == stat.S_IFREG:
                source = backing(node.key)
                if source is None:
                    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                else:
                    os.link(source, path)
            elif kind == stat.S_IFLNK:
                os.symlink(node.target, path)
            else:  # character and block devices, fifos; whiteouts are 0:0 character devices
                os.mknod(path, node.mode, node.rdev)
            _apply(node, path)
    # Directories last and deepest first: creating an entry changes its directory's times.
    for node, path in reversed(directories):
        _apply(node, path)
        _sync_directory(path)
    os.rename(staging, target)
    _sync_directory(os.fsencode(target.parent))


def _apply(node: Node, path: bytes) -> None:
    """Owner, then mode (chown clears set-id bits), xattrs and times, as the TOC gives them."""
    link = stat.S_ISLNK(node.mode)
    os.chown(path, node.uid, node.gid, follow_symlinks=False)
    if not link:
        os.chmod(path, stat.S_IMODE(node.mode))
    for name, value in node.xattrs.items():
        os.setxattr(path, name, value, follow_symlinks=False)
    os.utime(path, ns=(node.mtime_ns, node.mtime_ns), follow_symlinks=False)


def _sync_directory(path: bytes) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
