"""Read an eStargz TOC from the bytes of its gzip member.

The reader does no I/O: the caller fetches byte ranges (the blob is remote, and the FUSE layer
decides how to fetch and cache them) and hands them in. The TOC member is a gzip member holding
one tar entry, ``stargz.index.json``, and the tar end-of-archive blocks.
"""

from __future__ import annotations

import hashlib
import hmac
import tarfile

from lazy2dfs.chunking import Compression
from lazy2dfs.estargz.errors import TocDigestMismatchError, TocError, TocTooLargeError
from lazy2dfs.estargz.members import inflate_gzip_member
from lazy2dfs.estargz.toc import (
    DEFAULT_LIMITS,
    TOC_TAR_NAME,
    Toc,
    TocLimits,
    build_toc,
)

_BLOCK = tarfile.BLOCKSIZE


def parse_toc(
    member: bytes,
    *,
    toc_offset: int,
    expected_digest: str | None = None,
    limits: TocLimits = DEFAULT_LIMITS,
) -> Toc:
    """Parse the TOC gzip member found at ``toc_offset`` (normally up to the footer).

    With ``expected_digest`` (the layer's ``containerd.io/snapshot/stargz/toc.digest``) the
    JSON is checked before it is parsed, so an untrusted TOC is never interpreted.
    """
    toc_json = extract_toc_json(member, limits)
    check_toc_digest(toc_json, expected_digest)
    return build_toc(toc_json, payload_end=toc_offset, compression=Compression.GZIP, limits=limits)


def extract_toc_json(member: bytes, limits: TocLimits = DEFAULT_LIMITS) -> bytes:
    """The uncompressed TOC JSON inside a TOC gzip member, decompressing at most the cap."""
    cap = _BLOCK + limits.max_toc_bytes
    plain = inflate_gzip_member(member, cap + 1)
    if len(plain) < _BLOCK:
        raise TocError(f"TOC member holds {len(plain)} bytes, less than a tar header")
    try:
        header = tarfile.TarInfo.frombuf(plain[:_BLOCK], "utf-8", "surrogateescape")
    except tarfile.TarError as err:
        raise TocError(f"TOC member has no valid tar header: {err}") from None
    if header.name.removeprefix("./") != TOC_TAR_NAME or not header.isreg():
        raise TocError(f"TOC member holds {header.name!r}, not {TOC_TAR_NAME}")
    if header.size > limits.max_toc_bytes:
        raise TocTooLargeError(f"TOC is {header.size} bytes, cap {limits.max_toc_bytes}")
    if len(plain) < _BLOCK + header.size:
        raise TocError(f"TOC member truncated: {len(plain) - _BLOCK} of {header.size} bytes")
    return plain[_BLOCK : _BLOCK + header.size]


def check_toc_digest(toc_json: bytes, expected_digest: str | None) -> None:
    if expected_digest is None:
        return
    actual = "sha256:" + hashlib.sha256(toc_json).hexdigest()
    if not hmac.compare_digest(actual, expected_digest):
        raise TocDigestMismatchError(f"TOC digest {actual}, want {expected_digest}")
