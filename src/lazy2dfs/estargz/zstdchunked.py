"""The zstd:chunked variant: each chunk its own zstd frame, the TOC in a skippable frame.

Two footers exist, both stored in a skippable frame at the very end of the blob and both read
as little-endian uint64s: the 40-byte one that stargz-snapshotter writes (TOC offset,
compressed size, uncompressed size, manifest type 1, magic ``GnUlInUx``) and the 64-byte one
that containers/storage writes since 2023 (the same four fields, then the tar-split position,
magic ``GNUlInUx``). We read both and write the 40-byte one. The TOC offset points at the
compressed TOC itself, 8 bytes past the start of its skippable frame.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from lazy2dfs.chunking import Compression
from lazy2dfs.estargz.errors import FooterError, TocError, TocTooLargeError
from lazy2dfs.estargz.members import read_zstd_frame
from lazy2dfs.estargz.reader import check_toc_digest
from lazy2dfs.estargz.toc import DEFAULT_LIMITS, Toc, TocLimits, build_toc

ZSTD_FOOTER_SIZE = 40
ZSTD_FOOTER_SIZE_CONTAINERS = 64
SKIPPABLE_FRAME_HEADER_SIZE = 8
MANIFEST_CHECKSUM_ANNOTATION = "io.containers.zstd-chunked.manifest-checksum"
MANIFEST_POSITION_ANNOTATION = "io.containers.zstd-chunked.manifest-position"

_SKIPPABLE_MAGIC = b"\x50\x2a\x4d\x18"
_MAGIC_STARGZ = b"GnUlInUx"
_MAGIC_CONTAINERS = b"GNUlInUx"
_MANIFEST_TYPE_CRFS = 1


@dataclass(frozen=True, slots=True)
class ZstdFooter:
    toc_offset: int
    toc_compressed_size: int
    toc_uncompressed_size: int
    size: int

    @property
    def payload_end(self) -> int:
        """Where the chunk frames end: the start of the TOC's skippable frame."""
        return self.toc_offset - SKIPPABLE_FRAME_HEADER_SIZE


def is_zstd_chunked(tail: bytes) -> bool:
    """Whether the blob's last bytes carry a zstd:chunked footer magic."""
    return tail[-8:] in (_MAGIC_STARGZ, _MAGIC_CONTAINERS)


def parse_zstd_footer(tail: bytes) -> ZstdFooter:
    """Parse the footer from the last 40 (stargz) or 64 (containers/storage) bytes of a blob."""
    magic = tail[-8:]
    if magic == _MAGIC_STARGZ:
        size = ZSTD_FOOTER_SIZE
    elif magic == _MAGIC_CONTAINERS:
        size = ZSTD_FOOTER_SIZE_CONTAINERS
    else:
        raise FooterError("no zstd:chunked footer magic")
    if len(tail) < size:
        raise FooterError(f"zstd:chunked footer needs {size} bytes, got {len(tail)}")
    offset, compressed, uncompressed, manifest_type = struct.unpack_from(
        "<4Q", tail, len(tail) - size
    )
    if manifest_type != _MANIFEST_TYPE_CRFS:
        raise FooterError(f"zstd:chunked manifest type {manifest_type}, want 1")
    if offset < SKIPPABLE_FRAME_HEADER_SIZE or max(offset, compressed, uncompressed) >= 1 << 63:
        raise FooterError(f"zstd:chunked footer fields out of range: {offset}, {compressed}")
    return ZstdFooter(offset, compressed, uncompressed, size)


def parse_zstd_toc(
    compressed_toc: bytes,
    *,
    footer: ZstdFooter,
    expected_digest: str | None = None,
    limits: TocLimits = DEFAULT_LIMITS,
) -> Toc:
    """Parse the TOC at ``footer.toc_offset`` (``footer.toc_compressed_size`` bytes)."""
    if footer.toc_uncompressed_size > limits.max_toc_bytes:
        raise TocTooLargeError(
            f"TOC is {footer.toc_uncompressed_size} bytes, cap {limits.max_toc_bytes}"
        )
    toc_json = read_zstd_frame(compressed_toc, footer.toc_uncompressed_size + 1)
    if len(toc_json) != footer.toc_uncompressed_size:
        raise TocError(f"TOC is {len(toc_json)} bytes, footer says {footer.toc_uncompressed_size}")
    check_toc_digest(toc_json, expected_digest)
    return build_toc(
        toc_json, payload_end=footer.payload_end, compression=Compression.ZSTD, limits=limits
    )


def skippable_frame(data: bytes) -> bytes:
    """Wrap ``data`` in a zstd skippable frame, which zstd decoders pass over."""
    return _SKIPPABLE_MAGIC + struct.pack("<I", len(data)) + data


def build_zstd_footer(
    toc_offset: int, toc_compressed_size: int, toc_uncompressed_size: int
) -> bytes:
    """The 40-byte footer, already wrapped in its skippable frame (48 bytes in all)."""
    footer = struct.pack(
        "<4Q", toc_offset, toc_compressed_size, toc_uncompressed_size, _MANIFEST_TYPE_CRFS
    )
    return skippable_frame(footer + _MAGIC_STARGZ)
