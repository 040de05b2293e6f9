"""Turn a chunk's compressed bytes into its verified payload.

This is the only way file bytes leave a blob: :func:`decode_chunk` hashes what it decompressed
and raises instead of returning anything that does not match the TOC's digest ("never serve an
unverified byte"). It decompresses no more than the chunk needs.
"""

from __future__ import annotations

import hashlib

from lazy2dfs.estargz.errors import ChunkDigestMismatchError, CompressedDataError
from lazy2dfs.estargz.members import inflate_gzip_member, read_zstd_frame
from lazy2dfs.estargz.toc import Chunk, Compression


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
    actual = "sha256:" + hashlib.sha256(payload).hexdigest()
    if actual != chunk.digest:
        raise ChunkDigestMismatchError(
            f"chunk of {chunk.path!r} at {chunk.file_offset}: got {actual}, want {chunk.digest}"
        )
    return payload
