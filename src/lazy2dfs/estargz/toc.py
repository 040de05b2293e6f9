"""The table of contents (TOC): its JSON model, its validation, and the chunk map built from it.

eStargz and zstd:chunked share this JSON (``{"version":1,"entries":[...]}``); only where the
chunks live and how they are compressed differs. The TOC arrives from a registry, so building a
:class:`Toc` checks everything that a later read would otherwise trust: names stay inside the
layer, hardlinks resolve, each regular file's chunks tile it exactly, every chunk lies before
the TOC and carries a digest. A ``Toc`` that exists is safe to serve from.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import hashlib
import itertools
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from lazy2dfs.chunking import Compression
from lazy2dfs.digest import is_sha256_digest
from lazy2dfs.errors import InvalidArgumentError, NotFoundError
from lazy2dfs.estargz.errors import TocError, TocTooLargeError, UnsafePathError

TOC_TAR_NAME = "stargz.index.json"
PREFETCH_LANDMARK = ".prefetch.landmark"
NO_PREFETCH_LANDMARK = ".no.prefetch.landmark"
LANDMARK_CONTENTS = b"\x0f"

_MAX_INT = (1 << 63) - 1


class EntryType(StrEnum):
    DIR = "dir"
    REG = "reg"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"
    CHAR = "char"
    BLOCK = "block"
    FIFO = "fifo"
    CHUNK = "chunk"


@dataclass(frozen=True, slots=True)
class TocLimits:
    """Caps that bound the memory a hostile or broken TOC can make us spend."""

    max_toc_bytes: int = 64 << 20
    max_entries: int = 1 << 20
    # Writers cut files into chunks of a few MiB (4 MiB by default); a chunk that says it holds
    # 128 MiB in a tiny blob is a decompression bomb.
    max_chunk_size: int = 64 << 20


DEFAULT_LIMITS = TocLimits()


@dataclass(frozen=True, slots=True)
class TocEntry:
    """One TOC entry with every key of the spec; absent keys take the spec's zero values."""

    name: str
    type: EntryType
    size: int = 0
    modtime: datetime | None = None
    link_name: str = ""
    mode: int = 0
    uid: int = 0
    gid: int = 0
    user_name: str = ""
    group_name: str = ""
    offset: int = 0
    inner_offset: int = 0
    dev_major: int = 0
    dev_minor: int = 0
    xattrs: Mapping[str, bytes] = field(default_factory=dict)
    digest: str = ""
    chunk_offset: int = 0
    chunk_size: int = 0
    chunk_digest: str = ""
    end_offset: int = 0  # containers/storage zstd:chunked: end of this entry's frame

    def to_json(self) -> dict[str, Any]:
        """The entry as TOC JSON, omitting zero values as the spec does (uid/gid 0 included)."""
        out: dict[str, Any] = {"name": self.name, "type": str(self.type)}
        optional: tuple[tuple[str, Any], ...] = (
            ("size", self.size),
            ("modtime", _format_modtime(self.modtime)),
            ("linkName", self.link_name),
            ("mode", self.mode),
            ("uid", self.uid),
            ("gid", self.gid),
            ("userName", self.user_name),
            ("groupName", self.group_name),
            ("offset", self.offset),
            ("innerOffset", self.inner_offset),
            ("devMajor", self.dev_major),
            ("devMinor", self.dev_minor),
            ("xattrs", {k: base64.b64encode(v).decode() for k, v in sorted(self.xattrs.items())}),
            ("digest", self.digest),
            ("chunkOffset", self.chunk_offset),
            ("chunkSize", self.chunk_size),
            ("chunkDigest", self.chunk_digest),
            ("endOffset", self.end_offset),
        )
        out.update((key, value) for key, value in optional if value)
        return out


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of a regular file and where its compressed bytes are in the blob.

    ``compressed_offset``..``compressed_end`` is the byte range to fetch; the payload starts
    ``inner_offset`` bytes into the decompressed member. ``digest`` is always set: a TOC whose
    chunks cannot be verified is rejected when it is parsed.
    """

    path: str
    file_offset: int
    size: int
    compressed_offset: int
    compressed_end: int
    inner_offset: int
    digest: str
    compression: Compression

    @property
    def compressed_size(self) -> int:
        return self.compressed_end - self.compressed_offset


@dataclass(frozen=True, slots=True)
class Toc:
    """A validated TOC: entries by path, implied directories, and each file's chunk list."""

    version: int
    digest: str
    entries: tuple[TocEntry, ...]
    payload_end: int
    compression: Compression
    prefetch_size: int
    _by_path: Mapping[str, TocEntry]
    _children: Mapping[str, tuple[str, ...]]
    _chunks: Mapping[str, tuple[Chunk, ...]]

    @property
    def by_path(self) -> Mapping[str, TocEntry]:
        """Every path (root is ``""``), including directories implied by deeper names."""
        return self._by_path

    def get(self, path: str) -> TocEntry | None:
        return self._by_path.get(_lookup_name(path))

    def resolve(self, path: str) -> TocEntry:
        """The entry at ``path``, or the hardlink's target when ``path`` is a hardlink."""
        entry = self.get(path)
        if entry is None:
            raise NotFoundError(f"{path!r} is not in the TOC")
        if entry.type is EntryType.HARDLINK:
            return self._by_path[entry.link_name]  # validated and flattened at build time
        return entry

    def children(self, path: str) -> tuple[str, ...]:
        """Base names inside directory ``path``, sorted; landmarks are hidden."""
        return self._children.get(_lookup_name(path), ())

    def chunks_for(self, path: str, offset: int = 0, length: int | None = None) -> list[Chunk]:
        """The chunks holding bytes ``offset``..``offset+length`` of the file (clipped to size)."""
        if offset < 0 or (length is not None and length < 0):
            raise InvalidArgumentError(f"bad range offset={offset} length={length}")
        entry = self.resolve(path)
        if entry.type is not EntryType.REG:
            raise InvalidArgumentError(f"{path!r} is a {entry.type}, not a regular file")
        chunks = self._chunks.get(entry.name, ())
        end = entry.size if length is None else min(entry.size, offset + length)
        if offset >= end:
            return []
        first = bisect.bisect_right(chunks, offset, key=lambda c: c.file_offset) - 1
        last = bisect.bisect_left(chunks, end, key=lambda c: c.file_offset)
        return list(chunks[first:last])

    def iter_chunks(self) -> Iterator[Chunk]:
        """Every chunk of every file, in blob order (the order a prefetch should read them)."""
        all_chunks = [c for file_chunks in self._chunks.values() for c in file_chunks]
        return iter(sorted(all_chunks, key=lambda c: (c.compressed_offset, c.inner_offset)))


# Linux's limits: a path a kernel could not even look up is refused before it costs memory.
PATH_MAX = 4096
NAME_MAX = 255


def clean_name(name: str) -> str:
    """Normalise a tar/TOC name (``./a//b/`` → ``a/b``, ``./`` → root ``""``); reject escapes
    and names longer than the kernel allows."""
    if "\x00" in name:
        raise UnsafePathError(f"name {name!r} contains NUL")
    if len(name.encode(errors="surrogateescape")) > PATH_MAX:
        raise UnsafePathError(f"name {name[:64]!r}… is longer than PATH_MAX ({PATH_MAX} bytes)")
    if name.startswith("/"):
        raise UnsafePathError(f"name {name!r} is absolute")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise UnsafePathError(f"name {name!r} contains '..'")
    if any(len(part.encode(errors="surrogateescape")) > NAME_MAX for part in parts):
        raise UnsafePathError(f"name {name[:64]!r}… has a component longer than {NAME_MAX} bytes")
    return "/".join(parts)


def _lookup_name(path: str) -> str:
    """Lookup accepts the forms callers have (``/a``, ``a/``) but never resolves ``..``."""
    return clean_name(path.lstrip("/"))


def _format_modtime(value: datetime | None) -> str:
    if value is None:
        return ""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_toc(
    toc_json: bytes,
    *,
    payload_end: int,
    compression: Compression,
    limits: TocLimits,
) -> Toc:
    """Parse and validate TOC JSON whose chunks all lie before ``payload_end`` in the blob."""
    if len(toc_json) > limits.max_toc_bytes:
        raise TocTooLargeError(f"TOC is {len(toc_json)} bytes, cap {limits.max_toc_bytes}")
    try:
        document = json.loads(toc_json)
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
        raise TocError(f"TOC is not JSON: {err}") from None
    if not isinstance(document, dict):
        raise TocError("TOC is not a JSON object")
    version = document.get("version")
    if type(version) is not int or version != 1:
        raise TocError(f"unsupported TOC version {version!r}")
    raw_entries = document.get("entries")
    if not isinstance(raw_entries, list):
        raise TocError("TOC has no entries list")
    if len(raw_entries) > limits.max_entries:
        raise TocTooLargeError(f"TOC has {len(raw_entries)} entries, cap {limits.max_entries}")
    entries = _name_chunks([_parse_entry(raw, i) for i, raw in enumerate(raw_entries)])
    by_path = _index_paths(entries, limits.max_entries)
    chunks = _chunk_map(entries, payload_end, compression, limits.max_chunk_size)
    landmark = by_path.get(PREFETCH_LANDMARK)
    return Toc(
        version=version,
        digest="sha256:" + hashlib.sha256(toc_json).hexdigest(),
        entries=tuple(entries),
        payload_end=payload_end,
        compression=compression,
        prefetch_size=landmark.offset if landmark is not None else 0,
        _by_path=MappingProxyType(by_path),
        _children=MappingProxyType(_children_index(by_path)),
        _chunks=MappingProxyType(chunks),
    )


def _parse_entry(raw: object, index: int) -> TocEntry:
    if not isinstance(raw, dict):
        raise TocError(f"entry {index} is not an object")
    fields = _EntryFields(raw, index)
    type_name = fields.string("type")
    try:
        entry_type = EntryType(type_name)
    except ValueError:
        raise TocError(f"entry {index}: unknown type {type_name!r}") from None
    return TocEntry(
        name=clean_name(fields.string("name")),
        type=entry_type,
        size=fields.integer("size"),
        modtime=fields.modtime("modtime"),
        link_name=fields.string("linkName"),
        mode=fields.integer("mode"),
        uid=fields.integer("uid"),
        gid=fields.integer("gid"),
        user_name=fields.string("userName"),
        group_name=fields.string("groupName"),
        offset=fields.integer("offset"),
        inner_offset=fields.integer("innerOffset"),
        dev_major=fields.integer("devMajor"),
        dev_minor=fields.integer("devMinor"),
        xattrs=fields.xattrs("xattrs"),
        digest=fields.digest("digest"),
        chunk_offset=fields.integer("chunkOffset"),
        chunk_size=fields.integer("chunkSize"),
        chunk_digest=fields.digest("chunkDigest"),
        end_offset=fields.integer("endOffset"),
    )


class _EntryFields:
    """Typed access to one raw entry's keys, each failure naming the entry and key."""

    def __init__(self, raw: dict[str, Any], index: int) -> None:
        self._raw = raw
        self._index = index

    def _fail(self, key: str, why: str) -> TocError:
        return TocError(f"entry {self._index}: {key}: {why}")

    def string(self, key: str) -> str:
        value = self._raw.get(key, "")
        if not isinstance(value, str):
            raise self._fail(key, f"{value!r} is not a string")
        return value

    def integer(self, key: str) -> int:
        value = self._raw.get(key, 0)
        if type(value) is not int:  # excludes bool and float
            raise self._fail(key, f"{value!r} is not an integer")
        if not 0 <= value <= _MAX_INT:
            raise self._fail(key, f"{value} is out of range")
        return value

    def digest(self, key: str) -> str:
        value = self.string(key)
        if value and not is_sha256_digest(value):
            raise self._fail(key, f"{value!r} is not a sha256 digest")
        return value

    def modtime(self, key: str) -> datetime | None:
        value = self.string(key)
        if not value:
            return None
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise self._fail(key, f"{value!r} is not RFC 3339") from None
        if parsed.tzinfo is None:
            raise self._fail(key, f"{value!r} has no time zone")
        return parsed

    def xattrs(self, key: str) -> dict[str, bytes]:
        value = self._raw.get(key, {})
        if not isinstance(value, dict):
            raise self._fail(key, "is not an object")
        decoded: dict[str, bytes] = {}
        for name, encoded in value.items():
            if not isinstance(encoded, str):
                raise self._fail(key, f"value of {name!r} is not a string")
            try:
                decoded[name] = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                raise self._fail(key, f"value of {name!r} is not base64") from None
        return decoded


def _name_chunks(entries: list[TocEntry]) -> list[TocEntry]:
    """Give each ``chunk`` entry its file's name; writers may leave it empty."""
    named: list[TocEntry] = []
    current: TocEntry | None = None
    for index, entry in enumerate(entries):
        if entry.type is EntryType.REG:
            current = entry
        elif entry.type is EntryType.CHUNK:
            if current is None:
                raise TocError(f"entry {index}: chunk does not follow a regular file")
            if entry.name not in ("", current.name):
                raise TocError(f"entry {index}: chunk of {entry.name!r} follows {current.name!r}")
            entry = replace(entry, name=current.name)
        else:
            current = None
        named.append(entry)
    return named


def _index_paths(entries: Sequence[TocEntry], max_entries: int) -> dict[str, TocEntry]:
    """Every path, implied directories included, which count against ``max_entries`` too: a
    few thousand names each thousands of directories deep would otherwise imply millions."""
    by_path: dict[str, TocEntry] = {}
    for entry in entries:
        if entry.type is EntryType.CHUNK:
            continue
        previous = by_path.get(entry.name)
        if previous is not None and not (previous.type is entry.type is EntryType.DIR):
            raise TocError(f"{entry.name!r} appears twice")
        if entry.name == "" and entry.type is not EntryType.DIR:
            raise TocError(f"root entry is a {entry.type}")
        by_path[entry.name] = entry
    for name, entry in list(by_path.items()):
        if entry.type is EntryType.HARDLINK:
            by_path[name] = _resolve_hardlink(entry, by_path)
    by_path.setdefault("", TocEntry(name="", type=EntryType.DIR, mode=0o755))
    for name in list(by_path):
        parent = name.rpartition("/")[0] if name else None
        while parent is not None:
            existing = by_path.get(parent)
            if existing is None:
                by_path[parent] = TocEntry(name=parent, type=EntryType.DIR, mode=0o755)
                if len(by_path) > max_entries:
                    raise TocTooLargeError(
                        f"TOC implies more than {max_entries} files and directories"
                    )
            elif existing.type is not EntryType.DIR:
                raise TocError(f"{name!r} is inside {parent!r}, which is a {existing.type}")
            else:
                break
            parent = parent.rpartition("/")[0] if parent else None
    return by_path


def _resolve_hardlink(link: TocEntry, by_path: Mapping[str, TocEntry]) -> TocEntry:
    """Point a hardlink straight at its final non-link target (chains flattened, cycles refused)."""
    seen = {link.name}
    target_name = clean_name(link.link_name)
    while True:
        target = by_path.get(target_name)
        if target is None:
            raise TocError(f"hardlink {link.name!r} points to missing {link.link_name!r}")
        if target.type is not EntryType.HARDLINK:
            break
        if target.name in seen:
            raise TocError(f"hardlink {link.name!r} is part of a cycle")
        seen.add(target.name)
        target_name = clean_name(target.link_name)
    if target.type is EntryType.DIR:
        raise TocError(f"hardlink {link.name!r} points to directory {target.name!r}")
    return replace(link, link_name=target.name)


def _children_index(by_path: Mapping[str, TocEntry]) -> dict[str, tuple[str, ...]]:
    children: dict[str, list[str]] = {}
    for name in by_path:
        if not name or name in (PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK):
            continue
        parent, _, base = name.rpartition("/")
        children.setdefault(parent, []).append(base)
    return {parent: tuple(sorted(names)) for parent, names in children.items()}


def _chunk_map(
    entries: Sequence[TocEntry], payload_end: int, compression: Compression, max_chunk_size: int
) -> dict[str, tuple[Chunk, ...]]:
    """Each non-empty regular file's chunks, checked to tile the file and to lie in the payload."""
    pieces: dict[str, list[TocEntry]] = {}
    files: dict[str, TocEntry] = {}
    for entry in entries:
        if entry.type is EntryType.REG:
            files[entry.name] = entry
            pieces[entry.name] = [entry] if entry.size else []
        elif entry.type is EntryType.CHUNK:
            if not files[entry.name].size:
                raise TocError(f"chunk of empty file {entry.name!r}")
            pieces[entry.name].append(entry)
    member_starts = sorted({p.offset for ps in pieces.values() for p in ps} | {payload_end})
    chunk_map: dict[str, tuple[Chunk, ...]] = {}
    for name, file_pieces in pieces.items():
        if file_pieces:
            chunk_map[name] = _file_chunks(
                files[name], file_pieces, member_starts, payload_end, compression, max_chunk_size
            )
    _check_members_disjoint(chunk_map.values())
    return chunk_map


def _file_chunks(
    file: TocEntry,
    file_pieces: Sequence[TocEntry],
    member_starts: Sequence[int],
    payload_end: int,
    compression: Compression,
    max_chunk_size: int,
) -> tuple[Chunk, ...]:
    chunks: list[Chunk] = []
    position = 0
    for piece in file_pieces:
        if piece.chunk_offset != position:
            kind = "overlap" if piece.chunk_offset < position else "leave a gap"
            raise TocError(f"chunks of {file.name!r} {kind} at {piece.chunk_offset}")
        size = piece.chunk_size or file.size - piece.chunk_offset
        if size <= 0 or position + size > file.size:
            raise TocError(f"chunk of {file.name!r} at {position} runs past its size {file.size}")
        if size > max_chunk_size:
            raise TocError(
                f"chunk of {file.name!r} at {position} holds {size} bytes, more than"
                f" {max_chunk_size}: refused as a decompression bomb"
            )
        if piece.offset >= payload_end:
            raise TocError(f"chunk of {file.name!r} at blob offset {piece.offset} is past the data")
        digest = piece.chunk_digest or (file.digest if len(file_pieces) == 1 else "")
        if not digest:
            raise TocError(f"chunk of {file.name!r} at {position} has no digest to verify it")
        end = piece.end_offset or member_starts[bisect.bisect_right(member_starts, piece.offset)]
        if not piece.offset < end <= payload_end:
            raise TocError(f"chunk of {file.name!r} at {position} has end offset {end}")
        chunks.append(
            Chunk(
                path=file.name,
                file_offset=position,
                size=size,
                compressed_offset=piece.offset,
                compressed_end=end,
                inner_offset=piece.inner_offset,
                digest=digest,
                compression=compression,
            )
        )
        position += size
    if position != file.size:
        raise TocError(f"chunks of {file.name!r} cover {position} of {file.size} bytes")
    return tuple(chunks)


def _check_members_disjoint(all_chunks: Iterable[tuple[Chunk, ...]]) -> None:
    """Two chunks may share a member (``innerOffset``) but never the same decompressed bytes."""
    ordered = sorted(
        (c for file_chunks in all_chunks for c in file_chunks),
        key=lambda c: (c.compressed_offset, c.inner_offset),
    )
    for before, after in itertools.pairwise(ordered):
        same_member = before.compressed_offset == after.compressed_offset
        if same_member and before.inner_offset + before.size > after.inner_offset:
            raise TocError(
                f"chunks of {before.path!r} and {after.path!r} overlap in member "
                f"at {before.compressed_offset}"
            )
