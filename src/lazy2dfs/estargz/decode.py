"""Turn a chunk's or a segment's compressed bytes into verified payloads.

This is the only way file bytes leave a blob: both functions hash what they decompressed and
raise instead of returning anything that does not match the TOC's digest ("never serve an
unverified byte"). Output is bounded by what the TOC says the bytes hold, so a small hostile
blob cannot make us allocate more.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from lazy2dfs.chunking import Compression
from lazy2dfs.estargz.errors import ChunkDigestMismatchError, CompressedDataError
from lazy2dfs.estargz.layout import Segment
from lazy2dfs.estargz.members import (
    inflate_gzip_member,
    inflate_gzip_segment,
    read_zstd_frame,
    read_zstd_frames,
)
from lazy2dfs.estargz.toc import Chunk


def decode_chunk(chunk: Chunk, compressed: bytes) -> bytes:
    """The chunk's payload, from blob bytes starting at ``chunk.compressed_offset``.

    ``compressed`` is normally exactly ``compressed_offset..compressed_end``; trailing bytes are
    ignored because decompression stops at the end of the chunk's member.
    """
    wanted = chunk.inner_offset + chunk.size
    if chunk.compression is Compression.GZIP:
        plain = inflate_gzip_member(compressed, wanted)
    else:
        plain = read_zstd_frame(compressed, wanted)
    if len(plain) < wanted:
        raise CompressedDataError(
            f"member at {chunk.compressed_offset} of {chunk.path!r} holds {len(plain)} bytes, "
            f"chunk needs {wanted}"
        )
    payload = plain[chunk.inner_offset : wanted]
    _verify(chunk, payload)
    return payload


@dataclass(frozen=True, slots=True)
class DecodedSegment:
    """A segment's verified payloads (in ``segment.chunks`` order) and its gap: every decoded
    byte that is not a payload (tar padding and headers), in stream order."""

    segment: Segment
    payloads: tuple[memoryview, ...]
    gap: bytes


def decode_segment(
    segment: Segment, compressed: bytes | memoryview, compression: Compression, gap_limit: int
) -> DecodedSegment:
    """Decodes all of ``segment`` (``compressed`` is exactly its bytes), verifies every chunk
    and keeps the rest as the gap; a gap longer than ``gap_limit`` is a decompression bomb."""
    if len(compressed) != segment.compressed_size:
        raise CompressedDataError(
            f"segment at {segment.start}: {len(compressed)} bytes, want {segment.compressed_size}"
        )
    limit = segment.decoded_bound + gap_limit
    if compression is Compression.GZIP:
        plain = memoryview(inflate_gzip_segment(compressed, limit))
    else:
        plain = memoryview(read_zstd_frames(compressed, limit, segment.decoded_bound))
    if len(plain) < segment.decoded_bound:
        raise CompressedDataError(
            f"segment at {segment.start} holds {len(plain)} bytes, its chunks need"
            f" {segment.decoded_bound}"
        )
    payloads: list[memoryview] = []
    gap = bytearray()
    position = 0
    for chunk in segment.chunks:
        gap += plain[position : chunk.inner_offset]
        payload = plain[chunk.inner_offset : chunk.inner_offset + chunk.size]
        _verify(chunk, payload)
        payloads.append(payload)
        position = chunk.inner_offset + chunk.size
    gap += plain[position:]
    return DecodedSegment(segment, tuple(payloads), bytes(gap))


def _verify(chunk: Chunk, payload: bytes | memoryview) -> None:
    actual = "sha256:" + hashlib.sha256(payload).hexdigest()
    if actual != chunk.digest:
        raise ChunkDigestMismatchError(
            f"chunk of {chunk.path!r} at {chunk.file_offset}: got {actual}, want {chunk.digest}"
        )
