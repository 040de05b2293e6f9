"""One layer's conversion: decompress the source blob (checking its diff ID), write it as
eStargz or zstd:chunked, and read the result's TOC back."""

from __future__ import annotations

import gzip
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Protocol

import zstandard

from lazy2dfs.chunking import DEFAULT_CHUNK_SIZE, Compression
from lazy2dfs.convert.errors import UnsupportedImageError
from lazy2dfs.estargz import WriteResult, WriterOptions, open_blob, write_blob_from_tar
from lazy2dfs.progress import ReadProgress
from lazy2dfs.registry_client import OCI_LAYER_GZIP, OCI_LAYER_ZSTD

_ZSTD_MAGIC: Final = b"\x28\xb5\x2f\xfd"
_GZIP_MAGIC: Final = b"\x1f\x8b"
_COPY_BLOCK: Final = 1 << 20


@dataclass(frozen=True)
class ConvertOptions:
    """``compression``: zstd:chunked (the default: it decodes ~2.5x faster than gzip) or gzip
    (eStargz, for clients that only know gzip layers); ``workers`` compress in parallel
    (default: every core); ``level`` as in :class:`WriterOptions`."""

    compression: Compression = Compression.ZSTD
    chunk_size: int = DEFAULT_CHUNK_SIZE
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    level: int | None = None

    @property
    def media_type(self) -> str:
        return OCI_LAYER_ZSTD if self.compression is Compression.ZSTD else OCI_LAYER_GZIP

    def writer_options(self) -> WriterOptions:
        return WriterOptions(
            chunk_size=self.chunk_size,
            compression=self.compression,
            level=self.level,
            workers=self.workers,
        )


class _Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


def decompress_layer(source: Path, tar_path: Path, report: Callable[[int], None]) -> str:
    """Writes the plain tar of ``source`` (gzip, zstd, or already plain) to ``tar_path`` and
    returns its diff ID. Detection is by magic bytes, not media type: registries and tools
    mislabel. Multi-member gzip (eStargz) and multi-frame zstd (zstd:chunked) both work."""
    digest = hashlib.sha256()
    with source.open("rb") as raw, tar_path.open("wb") as out:
        magic = raw.read(4)
        raw.seek(0)
        stream: _Readable
        if magic.startswith(_GZIP_MAGIC):
            stream = gzip.GzipFile(fileobj=raw, mode="rb")
        elif magic == _ZSTD_MAGIC:
            stream = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        else:
            stream = raw
        try:
            while block := stream.read(_COPY_BLOCK):
                digest.update(block)
                out.write(block)
                report(raw.tell())
        except (OSError, EOFError, zstandard.ZstdError) as err:
            raise UnsupportedImageError(f"cannot decompress layer: {err}") from None
    return "sha256:" + digest.hexdigest()


def convert_layer_file(
    tar_path: Path, out_path: Path, options: ConvertOptions, report: Callable[[int], None]
) -> WriteResult:
    """Writes the blob for a plain tar and reads its TOC back: a writer bug must not reach a
    registry, and reading two ranges of a local file costs nothing next to compressing it."""
    with tar_path.open("rb") as raw, out_path.open("wb") as out:
        result = write_blob_from_tar(
            ReadProgress(raw, report),  # type: ignore[arg-type]
            out,
            options.writer_options(),
        )
    with out_path.open("rb") as blob:

        def read_range(offset: int, length: int) -> bytes:
            blob.seek(offset)
            return blob.read(length)

        open_blob(read_range, result.blob_size, expected_toc_digest=result.toc_digest)
    return result
