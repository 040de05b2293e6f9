"""Encoding one allotment as a zstd:chunked (default) or eStargz blob, or finding it in the cache.

zstd:chunked decodes ~2.5x faster than gzip at the same size (``make bench``, codecs), so it is
the format for weights; eStargz (``--compression gzip``) is a valid tar.gz, which the stock 2DFS
registry and clients that only know gzip layers can use as an ordinary layer. Either way
lazy2dfs mounts it lazily. The writer's output depends only on the
tar and the options (fixed gzip headers, fixed times), so an unchanged allotment keeps its
digest across builds and machines even when the cache is cold.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from lazy2dfs.chunking import DEFAULT_CHUNK_SIZE, Compression
from lazy2dfs.estargz import WriterOptions, write_blob_from_tar
from lazy2dfs.progress import ReadProgress
from lazy2dfs.tdfs.cache import AllotmentCache, EncodedBlob
from lazy2dfs.tdfs.field import Allotment
from lazy2dfs.tdfs.spec import AllotmentSpec
from lazy2dfs.tdfs.tarview import FIXED_MTIME, TarView, file_mode

# Bump when the bytes written for the same inputs change (tar layout, writer), so old cache
# records stop matching.
_KEY_VERSION: Final = "lazy2dfs-allotment-estargz-2"
_READ_SIZE: Final = 1 << 20


@dataclass(frozen=True, slots=True)
class EncodeOptions:
    """Options that change the blob's bytes (``chunk_size``, ``level``) and ones that do not."""

    chunk_size: int = DEFAULT_CHUNK_SIZE
    level: int | None = None
    workers: int = 2
    compression: Compression = Compression.ZSTD


@dataclass(frozen=True, slots=True)
class EncodedAllotment:
    row: int
    col: int
    blob: EncodedBlob
    cached: bool

    def field_allotment(self) -> Allotment:
        """The field entry: stock keys plus lazy2dfs's size, TOC digest and uncompressed size."""
        return Allotment(
            row=self.row,
            col=self.col,
            digest=self.blob.digest.removeprefix("sha256:"),
            diff_id=self.blob.diff_id.removeprefix("sha256:"),
            size=self.blob.size,
            toc_digest=self.blob.toc_digest.removeprefix("sha256:"),
            uncompressed_size=self.blob.uncompressed_size,
            compression="zstd" if self.blob.compression == "zstd" else None,
        )


def cache_key(spec: AllotmentSpec, options: EncodeOptions) -> str:
    """sha256 over what determines the blob: contents, modes, destinations, options."""
    files = []
    for file in sorted(spec.files, key=lambda f: f.dst):
        content = hashlib.sha256()
        with file.src.open("rb") as source:
            while block := source.read(_READ_SIZE):
                content.update(block)
        files.append({"dst": file.dst, "mode": file_mode(file.src), "sha256": content.hexdigest()})
    document = {
        "version": _KEY_VERSION,
        "chunk_size": options.chunk_size,
        "level": options.level,
        "compression": str(options.compression),
        "files": files,
    }
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()


def encode_allotment(
    spec: AllotmentSpec,
    cache: AllotmentCache,
    options: EncodeOptions,
    progress: Callable[[int, int], None] | None = None,
) -> EncodedAllotment:
    """The allotment's blob in ``cache.blobs``: found by key, or written and recorded.
    ``progress`` gets the bytes of its tar compressed so far, and the tar's size."""
    key = cache_key(spec, options)
    record = cache.get(key)
    if record is not None:
        return EncodedAllotment(spec.row, spec.col, record, cached=True)
    writer_options = WriterOptions(
        chunk_size=options.chunk_size,
        level=options.level,
        mtime=FIXED_MTIME,
        workers=options.workers,
        compression=options.compression,
    )
    view = TarView(spec.files)
    with (
        cache.blobs.writer() as (out, temporary),
        io.BufferedReader(view, _READ_SIZE) as archive,
    ):
        if progress is None:
            result = write_blob_from_tar(archive, out, writer_options)
        else:
            report = progress
            counted = ReadProgress(archive, lambda done: report(done, view.size))
            result = write_blob_from_tar(counted, out, writer_options)  # type: ignore[arg-type]
        out.flush()
        cache.blobs.commit(temporary, result.blob_digest)
    record = EncodedBlob(
        digest=result.blob_digest,
        size=result.blob_size,
        diff_id=result.diff_id,
        toc_digest=result.toc_digest,
        uncompressed_size=result.uncompressed_size,
        compression=str(options.compression),
    )
    cache.put(key, record)
    return EncodedAllotment(spec.row, spec.col, record, cached=False)
