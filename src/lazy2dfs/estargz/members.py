"""Bounded decompression of one gzip member or one zstd frame.

Both formats put each chunk (and the TOC) in its own member/frame, and the bytes come from an
untrusted blob. These functions stop at the end of the first member/frame and never produce more
than ``limit`` bytes, whatever sizes the headers claim, so a small hostile blob cannot exhaust
memory.
"""

from __future__ import annotations

import zlib

import zstandard

from lazy2dfs.estargz.errors import CompressedDataError

_GZIP_WBITS = 16 + zlib.MAX_WBITS


def inflate_gzip_member(compressed: bytes, limit: int) -> bytes:
    """Up to ``limit`` bytes of the gzip member at the start of ``compressed``."""
    try:
        return zlib.decompressobj(_GZIP_WBITS).decompress(compressed, limit)
    except zlib.error as err:
        raise CompressedDataError(f"bad gzip member: {err}") from None


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
