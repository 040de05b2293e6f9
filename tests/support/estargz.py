"""Builders for the estargz tests: input tars, blobs, hand-made TOC members and footers."""

from __future__ import annotations

import gzip
import io
import json
import struct
import tarfile
from collections.abc import Mapping, Sequence
from typing import Any

from lazy2dfs.estargz import (
    Toc,
    WriteResult,
    WriterOptions,
    decode_chunk,
    open_blob,
    write_blob_from_tar,
)
from lazy2dfs.estargz.footer import build_footer


def make_tar(
    files: Mapping[str, bytes],
    *,
    extra: Sequence[tarfile.TarInfo] = (),
    trailing: Sequence[tarfile.TarInfo] = (),
) -> bytes:
    """A tar: the ``extra`` headers, ``files`` (regular, mtime 1_000_000), then ``trailing``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info in extra:
            tar.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_000_000
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
        for info in trailing:
            tar.addfile(info)
    return buf.getvalue()


def write(tar_bytes: bytes, options: WriterOptions | None = None) -> tuple[bytes, WriteResult]:
    out = io.BytesIO()
    result = write_blob_from_tar(io.BytesIO(tar_bytes), out, options or WriterOptions())
    return out.getvalue(), result


def open_bytes(blob: bytes, expected_toc_digest: str | None = None) -> Toc:
    return open_blob(
        lambda offset, length: blob[offset : offset + length],
        len(blob),
        expected_toc_digest=expected_toc_digest,
    )


def read_file(
    blob: bytes, toc: Toc, path: str, offset: int = 0, length: int | None = None
) -> bytes:
    """A file's bytes read the way the FUSE layer will: chunk ranges, decode, verify, slice."""
    parts = []
    for chunk in toc.chunks_for(path, offset, length):
        payload = decode_chunk(chunk, blob[chunk.compressed_offset : chunk.compressed_end])
        parts.append((chunk.file_offset, payload))
    if not parts:
        return b""
    joined = b"".join(payload for _, payload in parts)
    start = offset - parts[0][0]
    end = None if length is None else start + length
    return joined[start:end]


def toc_member(toc: Mapping[str, Any] | bytes) -> bytes:
    """A TOC gzip member as the writer would make it, from a TOC document or raw JSON bytes."""
    raw = toc if isinstance(toc, bytes) else json.dumps(toc).encode()
    tar_buf = io.BytesIO()
    with tarfile.open(fileobj=tar_buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("stargz.index.json")
        info.size = len(raw)
        tar.addfile(info, io.BytesIO(raw))
    return gzip.compress(tar_buf.getvalue(), mtime=0)


def blob_with_toc(payload: bytes, toc: Mapping[str, Any] | bytes) -> bytes:
    """``payload`` (already-compressed members), then a TOC member, then the footer."""
    return payload + toc_member(toc) + build_footer(len(payload))


def legacy_footer(toc_offset: int) -> bytes:
    """The 47-byte stargz footer: the 22-byte payload is the whole extra field."""
    extra = b"%016xSTARGZ" % toc_offset
    header = b"\x1f\x8b\x08\x04\x00\x00\x00\x00\x00\xff" + struct.pack("<H", len(extra))
    return header + extra + b"\x01\x00\x00\xff\xff" + b"\x00" * 8
