"""Bounded decompression of one gzip member or one zstd frame.

Both formats put each chunk (and the TOC) in its own member/frame, and the bytes come from an
untrusted blob. These functions stop at the end of the first member/frame and never produce more
than ``limit`` bytes, whatever sizes the headers claim, so a small hostile blob cannot exhaust
memory.
"""

from __future__ import annotations

import platform
import struct
import zlib
from types import ModuleType
from typing import Protocol, cast

import deflate
import zstandard
from isal import isal_zlib

from lazy2dfs.estargz.errors import CompressedDataError


class Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


_GZIP_WBITS = 16 + zlib.MAX_WBITS
# The buffer frames are decoded into: the size expected and room for tar headers and padding
# after it, or where frames of unknown size start; it doubles from there.
_SLACK = 64 * 1024
_FIRST_BUFFER = 1 << 20

# A streamed member (one whose end is not known, or a segment of several) is inflated by ISA-L,
# 1.7x faster than zlib on x86_64 (`make bench`, codecs), with the same output bound, member end
# and CRC check; on some ARM cores it is slower, so zlib stays there.
_INFLATER: ModuleType = isal_zlib if platform.machine() in ("x86_64", "AMD64") else zlib
# A segment that is one whole member (the writers start one per chunk) is inflated by
# libdeflate (PyPI `deflate`), which also releases the GIL: 4 MiB members of the model-ready
# benchmark's F16 weights at 265-280 MiB/s of CPU against ISA-L's 165-235 (4 rounds, this
# machine's EPYC); `make bench` codecs' bf16-like weights at 253 against 207-220 (two runs).
_GZIP_TRAILER = struct.Struct("<II")
# isal's stubs declare its error class as an instance; it is the class IsalError.
_INFLATE_ERRORS = (zlib.error, cast(type[Exception], isal_zlib.error))


def inflate_gzip_member(compressed: bytes, limit: int) -> bytes:
    """Up to ``limit`` bytes of the gzip member at the start of ``compressed``."""
    try:
        data: bytes = _INFLATER.decompressobj(_GZIP_WBITS).decompress(compressed, limit)
    except _INFLATE_ERRORS as err:
        raise CompressedDataError(f"bad gzip member: {err}") from None
    return data


def read_zstd_frame(compressed: bytes, limit: int) -> bytes:
    """Up to ``limit`` bytes of the zstd frame at the start of ``compressed``.

    A stream reader is used rather than ``decompress`` because the latter trusts the frame's
    content-size field when sizing its output buffer.
    """
    parts: list[bytes] = []
    have = 0
    try:
        with zstandard.ZstdDecompressor().stream_reader(compressed) as reader:
            while have < limit:
                part = reader.read(limit - have)
                if not part:
                    break
                parts.append(part)
                have += len(part)
    except zstandard.ZstdError as err:
        raise CompressedDataError(f"bad zstd frame: {err}") from None
    return b"".join(parts)


def inflate_gzip_segment(compressed: bytes | memoryview, limit: int) -> bytes | bytearray:
    """A segment's gzip members, decoded and joined, as ``inflate_gzip_members``. A segment is
    usually one member: the writers start one per chunk. A segment of several is decoded
    twice; in the layer upstream's ``ctr-remote`` (0.12) wrote for the interop test, 1 of 11
    was (its last file's final chunk, then two members of headers)."""
    whole = _inflate_one_whole_member(compressed, limit)
    return whole if whole is not None else inflate_gzip_members(compressed, limit)


def inflate_gzip_members(compressed: bytes | memoryview, limit: int) -> bytes:
    """Every gzip member in ``compressed``, decoded and joined; more than ``limit`` bytes of
    output is an error (a member that inflates beyond what its entries can hold is a bomb)."""
    parts: list[bytes] = []
    have = 0
    rest = memoryview(compressed)
    try:
        while len(rest):
            inflater = _INFLATER.decompressobj(_GZIP_WBITS)
            part = inflater.decompress(rest, limit - have + 1)
            have += len(part)
            if have > limit:
                raise CompressedDataError(f"members decode to more than {limit} bytes")
            parts.append(part)
            if not inflater.eof:
                raise CompressedDataError("gzip member is truncated")
            rest = rest[len(rest) - len(inflater.unused_data) :]
    except _INFLATE_ERRORS as err:
        raise CompressedDataError(f"bad gzip member: {err}") from None
    return b"".join(parts)


def _inflate_one_whole_member(compressed: bytes | memoryview, limit: int) -> bytearray | None:
    """``compressed`` inflated, if it is one gzip member that decodes to at most ``limit`` bytes;
    None otherwise (several members, too many bytes, bad data: ``inflate_gzip_members`` then
    joins them or says what is wrong).

    libdeflate's binding decodes the first member into at most the bytes it is given room for
    and does not say where that member ended. It ended at the end of ``compressed`` if the last
    8 bytes are its trailer: the CRC-32 and length of what it decoded. Bytes a hostile blob
    hides before a trailer so copied are ignored, never served: the payloads are checked against
    their digests, and a gap missing a member's headers fails the layer's diff ID."""
    try:
        plain = deflate.gzip_decompress(compressed, limit + 1)
    except deflate.DeflateError:
        return None
    if len(plain) > limit:
        return None
    return plain if bytes(compressed[-_GZIP_TRAILER.size :]) == gzip_trailer(plain) else None


def gzip_trailer(data: bytes | bytearray) -> bytes:
    """The 8 bytes that end the gzip member of ``data``: its CRC-32 and length."""
    return _GZIP_TRAILER.pack(deflate.crc32(data), len(data) & 0xFFFFFFFF)


def read_zstd_frames(compressed: bytes | memoryview, limit: int, expected: int = 0) -> bytearray:
    """Every zstd frame in ``compressed`` (skippable frames yield nothing), decoded and joined;
    more than ``limit`` bytes of output is an error.

    Decoded into one buffer of ``expected`` bytes (grown, up to ``limit``, if they are more;
    ``expected``: what the frames should hold at least, e.g. the segment's chunks). Reading
    parts and joining them made a buffer per part and copied every byte once more: 4 MiB of
    incompressible weights (stored zstd blocks) decoded at 1.6 GB/s, into one buffer at 38;
    F16 weights that zstd compresses to 92 % decode at 1.2 GB/s either way."""
    buffer = bytearray(min(limit + 1, expected + _SLACK if expected else _FIRST_BUFFER))
    have = 0
    try:
        with zstandard.ZstdDecompressor().stream_reader(
            compressed, read_across_frames=True
        ) as reader:
            while True:
                if have == len(buffer):
                    if have > limit:
                        break
                    buffer += bytes(min(len(buffer), limit + 1 - have))
                got = reader.readinto(memoryview(buffer)[have:])
                if not got:
                    break
                have += got
    except zstandard.ZstdError as err:
        raise CompressedDataError(f"bad zstd frame: {err}") from None
    if have > limit:
        raise CompressedDataError(f"frames decode to more than {limit} bytes")
    del buffer[have:]
    return buffer


def read_at_most(reader: Readable, count: int) -> bytes:
    """Up to ``count`` bytes of ``reader``: fewer only at its end."""
    parts: list[bytes] = []
    have = 0
    while have < count:
        part = reader.read(count - have)
        if not part:
            break
        parts.append(part)
        have += len(part)
    return b"".join(parts)
