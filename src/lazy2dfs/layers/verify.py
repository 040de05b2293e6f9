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

from lazy2dfs.cache.layer import LayerCache
from lazy2dfs.chunking import Compression
from lazy2dfs.errors import IntegrityError
from lazy2dfs.estargz.members import inflate_gzip_members, read_zstd_frames
from lazy2dfs.estargz.pieces import Piece, PieceStream
from lazy2dfs.estargz.toc import (
    DEFAULT_LIMITS,
    TOC_TAR_NAME,
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


def diff_id(cache: LayerCache, tail: bytes) -> str:
    """The sha256 of the layer's tar stream, after checking its headers against the TOC.
    ``tail`` is the blob from the TOC on (recorded when the layer was opened).

    Hashed once the layer is complete, its payloads read back from the disk
    (``cache.writeback`` keeps only the last ones written in the page cache); the caller runs
    it at low priority, once the node's fetching has gone quiet
    (``remote.flight.FetchActivity``). A running hash, advanced as segments arrived, never got
    past the first segment: the tar headers no file needs, which the background fetch brings
    last. Fetched first, they let it run, but it then hashed the
    whole layer inside the load: a cold 1 GiB zstd:chunked model was ready in 8.3 s against
    7.75 (medians of 4 each, taking turns)."""
    toc = cache.layout.toc
    limit = DEFAULT_LIMITS.max_toc_bytes + (1 << 20)
    if toc.compression is Compression.GZIP:
        tail_plain = inflate_gzip_members(tail, limit)
    else:
        tail_plain = bytes(read_zstd_frames(tail, limit))
    digest = hashlib.sha256()
    for piece in cache.stream():
        digest.update(piece)
    digest.update(tail_plain)
    _check_headers(cache, tail_plain)
    return "sha256:" + digest.hexdigest()


class _HeaderStream(PieceStream):
    """The layer's tar stream with payload bytes read as zeros: enough for tarfile to walk
    the headers and seek over file contents without reading them from disk."""

    def read_external(self, piece: Piece, offset: int, count: int) -> bytes:
        return bytes(count)


def _header_stream(cache: LayerCache, tail_plain: bytes) -> tuple[_HeaderStream, dict[str, int]]:
    """The stream, and where each file's first payload starts in it."""
    stream = _HeaderStream()
    starts: dict[str, int] = {}
    for segment in cache.layout.segments:
        gap = cache.gap_bytes(segment)
        taken = 0
        inner = 0
        for chunk in segment.chunks:
            before = chunk.inner_offset - inner
            stream.add(gap[taken : taken + before])
            taken += before
            if chunk.file_offset == 0:
                starts[chunk.path] = stream.size
            stream.add_external(chunk.size, chunk)
            inner = chunk.inner_offset + chunk.size
        stream.add(gap[taken:])
    stream.add(tail_plain)
    return stream, starts


def _check_headers(cache: LayerCache, tail_plain: bytes) -> None:
    headers, starts = _header_stream(cache, tail_plain)
    entries = iter(e for e in cache.layout.toc.entries if e.type is not EntryType.CHUNK)
    stream = io.BufferedReader(headers, buffer_size=64 * 1024)
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
