"""The pyfuse3 operations of the one lazy2dfs mount.

The mount's root lists one directory per remote layer (named by the layer's id); each is the
root of a ``LayerTree``. Everything is read-only and immutable, so attributes and entries can be
cached by the kernel for long, and file contents stay in the page cache (``keep_cache``).
Bytes come from the layer's ``FileReader`` (``lazy2dfs.remote``), asked by file key.
"""

from __future__ import annotations

import errno
import functools
import inspect
import os
import stat
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import pyfuse3

from lazy2dfs import metrics
from lazy2dfs.errors import Lazy2dfsError
from lazy2dfs.fuse.reads_in_flight import ReadsInFlight
from lazy2dfs.fuse.tree import LayerTree, Node, slot_of
from lazy2dfs.logfmt import get_logger

log = get_logger(__name__)

# Layers never change under a mount, so the kernel may trust what it was told for long.
CACHE_TIMEOUT = 3600.0
BLOCK_SIZE = 4096
# The largest read the kernel sends: libfuse negotiates 256 pages (fuse/session.py).
REPLY_BYTES = 1024 * 1024


class FileReader(Protocol):
    """Produces verified bytes of a layer's regular files, named by ``Entry.key``: the read
    path knows files by name, not by FUSE node."""

    async def read(
        self, key: str, offset: int, size: int, into: bytearray | None = None
    ) -> bytes | memoryview: ...


@dataclass
class MountedLayer:
    name: bytes
    tree: LayerTree
    reader: FileReader


def _measured(operation: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Counts one FUSE operation by result (``ok`` or the errno name) and times it."""
    name = operation.__name__
    latency = metrics.FUSE_LATENCY.labels(name)

    @functools.wraps(operation)
    async def measured(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        result = "ok"
        try:
            return await operation(*args, **kwargs)
        except pyfuse3.FUSEError as exc:
            result = errno.errorcode.get(exc.errno, "other")
            raise
        except BaseException:
            result = "exception"
            raise
        finally:
            metrics.FUSE_OPERATIONS.labels(name, result).inc()
            latency.observe(time.perf_counter() - start)

    return measured


Ops = TypeVar("Ops", bound=type)


def _measure_operations(cls: Ops) -> Ops:
    """Wraps every pyfuse3 operation ``cls`` implements, so a new one cannot go unmeasured."""
    for name, member in list(vars(cls).items()):
        if inspect.iscoroutinefunction(member) and hasattr(pyfuse3.Operations, name):
            setattr(cls, name, _measured(member))
    return cls


@_measure_operations
class LayerFilesystem(pyfuse3.Operations):
    """All remote layers, each a subdirectory of the root."""

    enable_writeback_cache = False

    def __init__(self) -> None:
        super().__init__()
        self._layers: dict[int, MountedLayer] = {}  # by slot
        self._by_name: dict[bytes, int] = {}
        self._root_mtime_ns = time.time_ns()
        # One buffer for every read reply: pyfuse3 copies a reply into its FUSE message as soon
        # as the handler returns, before any other handler runs (handlers.pxi, fuse_read_async).
        self._reply = bytearray(REPLY_BYTES)
        self.reads_in_flight = ReadsInFlight()

    # Layer management, called from the daemon (inside the trio loop).

    def add_layer(self, name: str, tree: LayerTree, reader: FileReader) -> None:
        encoded = name.encode()
        if encoded in self._by_name or tree.slot in self._layers:
            raise Lazy2dfsError(f"layer {name} (slot {tree.slot}) is mounted already")
        self._layers[tree.slot] = MountedLayer(encoded, tree, reader)
        self._by_name[encoded] = tree.slot
        self._root_mtime_ns = time.time_ns()

    def remove_layer(self, name: str) -> None:
        slot = self._by_name.pop(name.encode(), None)
        if slot is not None:
            del self._layers[slot]
            self._root_mtime_ns = time.time_ns()

    def layer_names(self) -> list[str]:
        return [n.decode() for n in self._by_name]

    # Lookups.

    def _node(self, inode: int) -> Node:
        layer = self._layers.get(slot_of(inode))
        node = layer.tree.lookup(inode) if layer else None
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    def _root_attrs(self) -> pyfuse3.EntryAttributes:
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = pyfuse3.ROOT_INODE
        # Root only: overlayfs reaches the layers with its mounter's (root's) credentials, and a
        # local user must not read any tenant's files through the mount.
        attrs.st_mode = stat.S_IFDIR | 0o700
        attrs.st_nlink = 2 + len(self._layers)
        attrs.st_mtime_ns = attrs.st_ctime_ns = attrs.st_atime_ns = self._root_mtime_ns
        attrs.attr_timeout = 1.0  # layers come and go
        attrs.entry_timeout = 1.0
        attrs.st_blksize = BLOCK_SIZE
        return attrs

    def _attrs(self, node: Node) -> pyfuse3.EntryAttributes:
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = node.inode
        attrs.generation = 0
        attrs.st_mode = node.mode
        attrs.st_nlink = node.nlink
        attrs.st_uid = node.uid
        attrs.st_gid = node.gid
        attrs.st_rdev = node.rdev
        attrs.st_size = node.size
        attrs.st_blksize = BLOCK_SIZE
        attrs.st_blocks = (node.size + 511) // 512
        attrs.st_atime_ns = attrs.st_mtime_ns = attrs.st_ctime_ns = node.mtime_ns
        attrs.attr_timeout = CACHE_TIMEOUT
        attrs.entry_timeout = CACHE_TIMEOUT
        return attrs

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if inode == pyfuse3.ROOT_INODE:
            return self._root_attrs()
        return self._attrs(self._node(inode))

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if parent_inode == pyfuse3.ROOT_INODE:
            slot = self._by_name.get(name)
            if slot is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            return self._attrs(self._layers[slot].tree.root)
        child = self._node(parent_inode).children.get(name)
        if child is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attrs(child)

    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        node = self._node(inode)
        if not stat.S_ISLNK(node.mode):
            raise pyfuse3.FUSEError(errno.EINVAL)
        return node.target

    # Directories: the handle is the inode; offsets index the sorted listing.

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        if inode != pyfuse3.ROOT_INODE and not self._node(inode).is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        if fh == pyfuse3.ROOT_INODE:
            listing = [(name, self._layers[slot].tree.root) for name, slot in self._by_name.items()]
            listing.sort()
        else:
            listing = self._node(fh).sorted_children()
        for index in range(start_id, len(listing)):
            name, node = listing[index]
            if not pyfuse3.readdir_reply(token, name, self._attrs(node), index + 1):
                return

    async def releasedir(self, fh: int) -> None:
        return None

    # Files: the handle is the inode, reads go to the layer's reader.

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self._node(inode)
        if flags & (os.O_WRONLY | os.O_RDWR):
            raise pyfuse3.FUSEError(errno.EROFS)
        if not stat.S_ISREG(node.mode):
            raise pyfuse3.FUSEError(errno.EINVAL)
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    # pyfuse3 takes any buffer (PyObject_GetBuffer); its stub says bytes.
    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:  # type: ignore[override]
        node = self._node(fh)
        if off >= node.size:
            return b""
        size = min(size, node.size - off)
        reader = self._layers[slot_of(fh)].reader
        token = self.reads_in_flight.begin(fh, off, off + size)
        try:
            if size > len(self._reply):
                self._reply = bytearray(size)
            return await reader.read(node.key, off, size, self._reply)
        except Exception as exc:
            # Whatever went wrong, the reader gets EIO now: never a hang, never wrong bytes.
            log.error(
                "read failed",
                layer=self._layers[slot_of(fh)].name.decode(),
                inode=fh,
                offset=off,
                size=size,
                error=exc if isinstance(exc, Lazy2dfsError) else repr(exc),
                exc_info=not isinstance(exc, Lazy2dfsError),
            )
            raise pyfuse3.FUSEError(errno.EIO) from exc
        finally:
            self.reads_in_flight.end(fh, token)

    async def release(self, fh: int) -> None:
        return None

    # Extended attributes (overlayfs reads trusted.overlay.opaque from here).

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        if inode == pyfuse3.ROOT_INODE:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        value = self._node(inode).xattrs.get(name)
        if value is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return value

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        if inode == pyfuse3.ROOT_INODE:
            return []
        return list(self._node(inode).xattrs)

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = BLOCK_SIZE
        data.f_files = sum(len(layer.tree.nodes) for layer in self._layers.values())
        data.f_namemax = 255
        return data
