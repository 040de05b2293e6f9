"""Where a blob's bytes are: its *segments*, the unit lazy2dfs fetches, decodes and caches.

A blob's payload area (everything before the TOC) is cut at the start of every chunk's member,
and at 0. Each piece is a *segment*: one or more whole gzip members (zstd frames) that decode
to the payloads of the chunks that start there (at their ``innerOffset``) and to the bytes
between them, the *gap*: tar padding and the headers of the entries that follow. Every writer
we know puts each chunk's payload at the start of its own member, so the decoded segments,
in order, followed by the decoded TOC region, are exactly the layer's tar stream; that is what
lets a layer's diff ID be checked from the payloads and gaps a cache keeps.

The TOC has been validated (``estargz.toc``): chunks tile their files, lie before the TOC and
never overlap inside a member, so the segments computed here are consistent.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from lazy2dfs.estargz.toc import Chunk, EntryType, Toc


@dataclass(frozen=True, slots=True)
class Segment:
    """Bytes ``start``..``end`` of the blob, and the chunks whose payloads they hold."""

    index: int
    start: int
    end: int
    chunks: tuple[Chunk, ...]  # by inner offset

    @property
    def compressed_size(self) -> int:
        return self.end - self.start

    @property
    def payload_size(self) -> int:
        return sum(chunk.size for chunk in self.chunks)

    @property
    def decoded_bound(self) -> int:
        """The decoded bytes the payloads need, from the segment's start."""
        return max((c.inner_offset + c.size for c in self.chunks), default=0)


@dataclass(frozen=True, slots=True)
class RegularFile:
    """A regular file with content: its number in the layer (which names its backing file)
    and its chunks in file order."""

    number: int
    path: str
    size: int
    chunks: tuple[Chunk, ...]


class BlobLayout:
    """The segments of one blob and, for every chunk, its segment and file."""

    def __init__(self, toc: Toc) -> None:
        self.toc = toc
        starts = sorted({0, *(c.compressed_offset for c in toc.iter_chunks())})
        bounds = [*starts, toc.payload_end] if starts[-1] < toc.payload_end else starts
        by_start: dict[int, list[Chunk]] = {}
        for chunk in toc.iter_chunks():
            by_start.setdefault(chunk.compressed_offset, []).append(chunk)
        self.segments: tuple[Segment, ...] = tuple(
            Segment(i, start, end, tuple(by_start.get(start, ())))
            for i, (start, end) in enumerate(itertools.pairwise(bounds))
        )
        self._starts = [s.start for s in self.segments]
        files: dict[str, RegularFile] = {}
        for entry in toc.entries:
            if entry.type is EntryType.REG and entry.size and entry.name not in files:
                chunks = tuple(toc.chunks_for(entry.name))
                files[entry.name] = RegularFile(len(files), entry.name, entry.size, chunks)
        self._files: Mapping[str, RegularFile] = MappingProxyType(files)
        self._final = frozenset(
            (f.path, f.chunks[-1].file_offset) for f in files.values() if f.chunks
        )

    @property
    def files(self) -> Mapping[str, RegularFile]:
        """Regular files with content, by TOC path, in TOC order."""
        return self._files

    def file(self, path: str) -> RegularFile | None:
        """The regular file at ``path``, following a hard link; None for an empty file."""
        return self._files.get(self.toc.resolve(path).name)

    def segment_of(self, chunk: Chunk) -> Segment:
        return self.segments[bisect.bisect_right(self._starts, chunk.compressed_offset) - 1]

    def segments_for(self, chunks: Sequence[Chunk]) -> list[Segment]:
        """The segments holding ``chunks``, each once, in blob order."""
        found = {self.segment_of(c).index for c in chunks}
        return [self.segments[i] for i in sorted(found)]

    def is_final(self, chunk: Chunk) -> bool:
        """Whether ``chunk`` ends its file: only then can tar bytes follow it in its member."""
        return (chunk.path, chunk.file_offset) in self._final
