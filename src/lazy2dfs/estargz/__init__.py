"""The eStargz and zstd:chunked layer formats: read, verify, write.

Reading does no I/O of its own: the caller fetches byte ranges of the (remote) blob and hands
them in, or passes a ``read_range(offset, length)`` callable to :func:`open_blob`. Typical use::

    toc = open_blob(read_range, blob_size, expected_toc_digest=annotation)
    for chunk in toc.chunks_for("model/weights.bin", offset, length):
        data = decode_chunk(chunk, read_range(chunk.compressed_offset, chunk.compressed_size))

:func:`decode_chunk` verifies the chunk digest and raises rather than return unverified bytes.
"""

from lazy2dfs.chunking import Compression
from lazy2dfs.digest import DigestMismatchError
from lazy2dfs.estargz.blob import open_blob, open_blob_async
from lazy2dfs.estargz.decode import decode_chunk
from lazy2dfs.estargz.errors import (
    ChunkDigestMismatchError,
    CompressedDataError,
    FooterError,
    FormatError,
    SourceError,
    TocDigestMismatchError,
    TocError,
    TocTooLargeError,
    UnsafePathError,
)
from lazy2dfs.estargz.footer import FOOTER_SIZE, LEGACY_FOOTER_SIZE, Footer, parse_footer
from lazy2dfs.estargz.reader import parse_toc
from lazy2dfs.estargz.toc import (
    NO_PREFETCH_LANDMARK,
    PREFETCH_LANDMARK,
    Chunk,
    EntryType,
    Toc,
    TocEntry,
    TocLimits,
)
from lazy2dfs.estargz.writer import (
    TOC_DIGEST_ANNOTATION,
    UNCOMPRESSED_SIZE_ANNOTATION,
    WriteResult,
    WriterOptions,
    write_blob_from_directory,
    write_blob_from_tar,
)
from lazy2dfs.estargz.zstdchunked import ZstdFooter, parse_zstd_footer, parse_zstd_toc

__all__ = [
    "FOOTER_SIZE",
    "LEGACY_FOOTER_SIZE",
    "NO_PREFETCH_LANDMARK",
    "PREFETCH_LANDMARK",
    "TOC_DIGEST_ANNOTATION",
    "UNCOMPRESSED_SIZE_ANNOTATION",
    "Chunk",
    "ChunkDigestMismatchError",
    "CompressedDataError",
    "Compression",
    "DigestMismatchError",
    "EntryType",
    "Footer",
    "FooterError",
    "FormatError",
    "SourceError",
    "Toc",
    "TocDigestMismatchError",
    "TocEntry",
    "TocError",
    "TocLimits",
    "TocTooLargeError",
    "UnsafePathError",
    "WriteResult",
    "WriterOptions",
    "ZstdFooter",
    "decode_chunk",
    "open_blob",
    "open_blob_async",
    "parse_footer",
    "parse_toc",
    "parse_zstd_footer",
    "parse_zstd_toc",
    "write_blob_from_directory",
    "write_blob_from_tar",
]
