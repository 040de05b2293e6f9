"""Checks that a complete layer is the layer its image's config names.

containerd names a layer's snapshot by a chain ID built from the diff IDs in the image config
(the sha256 of each layer's uncompressed tar), and its own unpack refuses a layer whose tar
does not hash to its diff ID. A lazily served layer is checked chunk by chunk against its TOC,
which says nothing of the diff ID: an image whose config copies another image's diff ID would
get its own files mounted under the other image's chain ID. So once every segment of a layer is
cached, its tar stream is rebuilt from the payloads and gaps (``cache.layer``) and the TOC
region, and hashed; and the tar headers in it are compared with the TOC entries the mount
serves (a zstd:chunked TOC is outside the stream, so the hash alone would not cover it).
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass

from lazy2dfs.cache.layer import LayerCache
from lazy2dfs.errors import IntegrityError
from lazy2dfs.estargz.members import inflate_gzip_members, read_zstd_frames
from lazy2dfs.estargz.toc import (
    DEFAULT_LIMITS,
    TOC_TAR_NAME,
    Compression,
    EntryType,
    TocEntry,
    clean_name,
)

_TYPES = {
    tarfile.REGTYPE: EntryType.REG,
    tarfile.AREGTYPE: EntryType.REG,
    tarfile.DIRTYPE: EntryType.DIR,
    tarfile.SYMTYPE: EntryType.SYMLINK,
    tarfile.LNKTYPE: EntryType.HARDLINK,
    tarfile.CHRTYPE: EntryType.CHAR,
    tarfile.BLKTYPE: EntryType.BLOCK,
    tarfile.FIFOTYPE: EntryType.FIFO,
}
_XATTR = "SCHILY.xattr."


class LayerMismatchError(IntegrityError):
    """A layer's bytes are not the layer its image's config (or its TOC) says they are."""


@dataclass(frozen=True)
class _Piece:
    start: int  # in the tar stream
    data: bytes | None  # None: a payload, not needed to read headers
    length: int


def diff_id(cache: LayerCache, tail: bytes) -> str:
    """The sha256 of the layer's tar stream, after checking its headers against the TOC.
    ``tail`` is the blob from the TOC on (recorded when the layer was opened)."""
    toc = cache.layout.toc
    limit = DEFAULT_LIMITS.max_toc_bytes + (1 << 20)
    if toc.compression is Compression.GZIP:
        tail_plain = inflate_gzip_members(tail, limit)
    else:
        tail_plain = read_zstd_frames(tail, limit)
    digest = hashlib.sha256()
    for piece in cache.stream():
        digest.update(piece)
    digest.update(tail_plain)
    _check_headers(cache, tail_plain)
    return "sha256:" + digest.hexdigest()


def _pieces(cache: LayerCache, tail_plain: bytes) -> tuple[list[_Piece], dict[str, int]]:
    """The stream as gap pieces (bytes) and payload pieces (lengths only), and where each
    file's first payload starts in it."""
    pieces: list[_Piece] = []
    starts: dict[str, int] = {}
    position = 0
    for segment in cache.layout.segments:
        gap = cache.gap_bytes(segment)
        taken = 0
        inner = 0
        for chunk in segment.chunks:
            before = chunk.inner_offset - inner
            pieces.append(_Piece(position, gap[taken : taken + before], before))
            position += before
            taken += before
            if chunk.file_offset == 0:
                starts[chunk.path] = position
            pieces.append(_Piece(position, None, chunk.size))
            position += chunk.size
            inner = chunk.inner_offset + chunk.size
        pieces.append(_Piece(position, gap[taken:], len(gap) - taken))
        position += len(gap) - taken
    pieces.append(_Piece(position, tail_plain, len(tail_plain)))
    return pieces, starts


class _HeaderStream(io.RawIOBase):
    """The tar stream with payload bytes read as zeros: enough for tarfile to walk headers
    and seek over file contents without reading them from disk."""

    def __init__(self, pieces: list[_Piece]) -> None:
        self._pieces = [p for p in pieces if p.length]
        self._size = sum(p.length for p in self._pieces)
        self._position = 0
        self._index = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        written = 0
        while written < len(view) and self._position < self._size:
            piece = self._find(self._position)
            inside = self._position - piece.start
            count = min(len(view) - written, piece.length - inside)
            if piece.data is None:
                view[written : written + count] = bytes(count)
            else:
                view[written : written + count] = piece.data[inside : inside + count]
            written += count
            self._position += count
        return written

    def _find(self, position: int) -> _Piece:
        if not self._pieces[self._index].start <= position:
            self._index = 0
        while self._pieces[self._index].start + self._pieces[self._index].length <= position:
            self._index += 1
        return self._pieces[self._index]


def _check_headers(cache: LayerCache, tail_plain: bytes) -> None:
    pieces, starts = _pieces(cache, tail_plain)
    entries = iter(e for e in cache.layout.toc.entries if e.type is not EntryType.CHUNK)
    stream = io.BufferedReader(_HeaderStream(pieces), buffer_size=64 * 1024)
    try:
        with tarfile.open(fileobj=stream, mode="r:") as archive:
            for member in _members(archive):
                if clean_name(member.name) == TOC_TAR_NAME:
                    continue
                entry = next(entries, None)
                if entry is None:
                    raise LayerMismatchError(f"tar entry {member.name!r} is not in the TOC")
                _compare(member, entry, starts)
    except tarfile.TarError as exc:
        raise LayerMismatchError(f"the layer's tar stream is not a tar archive: {exc}") from exc
    left = next(entries, None)
    if left is not None:
        raise LayerMismatchError(f"TOC entry {left.name!r} is not in the tar stream")


def _members(archive: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    while (member := archive.next()) is not None:
        yield member


def _compare(member: tarfile.TarInfo, entry: TocEntry, starts: dict[str, int]) -> None:
    name = clean_name(member.name)
    kind = _TYPES.get(member.type)
    problems = []
    if name != entry.name:
        problems.append(f"name {name!r}")
    if kind is not entry.type:
        problems.append(f"type {kind}")
    if (member.mode & 0o7777, member.uid, member.gid) != (
        entry.mode & 0o7777,
        entry.uid,
        entry.gid,
    ):
        problems.append(f"mode/owner {member.mode:o} {member.uid}:{member.gid}")
    if kind is EntryType.REG and member.size != entry.size:
        problems.append(f"size {member.size}")
    if kind is EntryType.REG and entry.size and starts.get(entry.name) != member.offset_data:
        problems.append("contents elsewhere in the stream")
    if kind is EntryType.SYMLINK and member.linkname != entry.link_name:
        problems.append(f"link {member.linkname!r}")
    if kind is EntryType.HARDLINK and clean_name(member.linkname) != clean_name(entry.link_name):
        problems.append(f"link {member.linkname!r}")
    if kind in (EntryType.CHAR, EntryType.BLOCK) and (member.devmajor, member.devminor) != (
        entry.dev_major,
        entry.dev_minor,
    ):
        problems.append(f"device {member.devmajor}:{member.devminor}")
    xattrs = {
        key.removeprefix(_XATTR): value.encode("utf-8", "surrogateescape")
        for key, value in member.pax_headers.items()
        if key.startswith(_XATTR)
    }
    if xattrs != dict(entry.xattrs):
        problems.append(f"xattrs {sorted(xattrs)}")
    if problems:
        raise LayerMismatchError(
            f"tar entry {member.name!r} differs from its TOC entry: {', '.join(problems)}"
        )
