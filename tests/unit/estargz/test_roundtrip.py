"""Write a blob, open it through ranges, read every file back through verified chunk decode."""

from __future__ import annotations

import asyncio
import os
import tarfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lazy2dfs.errors import IntegrityError
from lazy2dfs.estargz import (
    FOOTER_SIZE,
    ChunkDigestMismatchError,
    Compression,
    FooterError,
    FormatError,
    TocDigestMismatchError,
    TocError,
    TocLimits,
    TocTooLargeError,
    WriterOptions,
    decode_chunk,
    open_blob,
    open_blob_async,
)
from lazy2dfs.estargz.zstdchunked import ZSTD_FOOTER_SIZE
from tests.support.estargz import (
    blob_with_toc,
    legacy_footer,
    make_tar,
    open_bytes,
    read_file,
    write,
)

FILES = {
    "weights/big.bin": os.urandom(300_000) + bytes(200_000),
    "weights/exact.bin": os.urandom(4 * 65_536),  # an exact multiple of the chunk size
    "weights/small.txt": b"hello",
    "empty": b"",
    "a/b/c/deep": b"x" * 70_000,
}


def link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


EXTRA = [link("hard", "weights/small.txt", tarfile.LNKTYPE), link("sym", "../x", tarfile.SYMTYPE)]


@pytest.fixture(scope="module", params=list(Compression))
def written(request: pytest.FixtureRequest) -> tuple[bytes, str]:
    tar = make_tar(FILES, trailing=EXTRA)
    options = WriterOptions(chunk_size=65_536, compression=request.param, workers=2)
    blob, result = write(tar, options)
    return blob, result.toc_digest


def test_every_file_reads_back_identical(written: tuple[bytes, str]) -> None:
    blob, toc_digest = written
    toc = open_bytes(blob, expected_toc_digest=toc_digest)
    for name, data in FILES.items():
        assert read_file(blob, toc, name) == data, name
    assert read_file(blob, toc, "hard") == FILES["weights/small.txt"]
    assert toc.resolve("sym").link_name == "../x"
    big = toc.chunks_for("weights/big.bin")
    assert len(big) == 8 and all(c.size == 65_536 for c in big[:-1])
    assert len(toc.chunks_for("weights/exact.bin")) == 4


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 500_010), st.integers(0, 200_000))
def test_any_range_reads_back_identical(offset: int, length: int) -> None:
    blob, toc_digest = _gzip_blob()
    toc = open_bytes(blob, toc_digest)
    expected = FILES["weights/big.bin"][offset : offset + length]
    assert read_file(blob, toc, "weights/big.bin", offset, length) == expected


_CACHE: dict[str, tuple[bytes, str]] = {}


def _gzip_blob() -> tuple[bytes, str]:
    if "gzip" not in _CACHE:
        blob, result = write(make_tar(FILES), WriterOptions(chunk_size=65_536, level=0))
        _CACHE["gzip"] = (blob, result.toc_digest)
    return _CACHE["gzip"]


def test_async_open_gives_the_same_toc(written: tuple[bytes, str]) -> None:
    blob, toc_digest = written

    async def read_range(offset: int, length: int) -> bytes:
        await asyncio.sleep(0)
        return blob[offset : offset + length]

    toc = asyncio.run(open_blob_async(read_range, len(blob), expected_toc_digest=toc_digest))
    assert toc == open_bytes(blob)


def test_open_reads_only_the_tail_and_the_toc(written: tuple[bytes, str]) -> None:
    blob, _ = written
    requests: list[tuple[int, int]] = []

    def read_range(offset: int, length: int) -> bytes:
        requests.append((offset, length))
        return blob[offset : offset + length]

    open_blob(read_range, len(blob))
    assert len(requests) == 2 and sum(length for _, length in requests) < len(blob) // 20
    (toc_start, toc_length), (tail_start, _) = sorted(requests)
    assert toc_start + toc_length <= tail_start  # no byte is read twice


def test_legacy_footer_blob_is_read() -> None:
    blob, toc_digest = _gzip_blob()
    toc_offset = open_bytes(blob).payload_end
    legacy = blob[:-FOOTER_SIZE] + legacy_footer(toc_offset)
    toc = open_bytes(legacy, expected_toc_digest=toc_digest)
    assert read_file(legacy, toc, "weights/small.txt") == b"hello"


def test_flipped_payload_byte_raises_digest_mismatch() -> None:
    blob, _ = _gzip_blob()  # level 0: payload bytes are stored verbatim, easy to flip
    toc = open_bytes(blob)
    chunk = toc.chunks_for("weights/small.txt")[0]
    member = bytearray(blob[chunk.compressed_offset : chunk.compressed_end])
    position = member.find(b"hello")
    member[position] ^= 0x01
    with pytest.raises(ChunkDigestMismatchError):
        decode_chunk(chunk, bytes(member))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "flip-compressed"])
def test_damaged_members_raise_integrity_errors(written: tuple[bytes, str], damage: str) -> None:
    blob, _ = written
    toc = open_bytes(blob)
    chunk = toc.chunks_for("weights/big.bin")[1]
    member = blob[chunk.compressed_offset : chunk.compressed_end]
    damaged = {
        "truncate": member[: len(member) // 2],
        "garbage": os.urandom(len(member)),
        "empty": b"",
        "flip-compressed": member[:40] + bytes([member[40] ^ 0xFF]) + member[41:],
    }[damage]
    with pytest.raises(IntegrityError):
        decode_chunk(chunk, damaged)


def test_toc_digest_mismatch_is_refused(written: tuple[bytes, str]) -> None:
    blob, _ = written
    with pytest.raises(TocDigestMismatchError):
        open_bytes(blob, expected_toc_digest="sha256:" + "0" * 64)


@pytest.mark.parametrize("cut", [1, FOOTER_SIZE, 200, 10_000])
def test_truncated_blobs_raise_format_errors(written: tuple[bytes, str], cut: int) -> None:
    blob, _ = written
    with pytest.raises(FormatError):
        open_bytes(blob[:-cut])


@pytest.mark.parametrize("keep", [0, 1, 39, 46, 50])
def test_tiny_blobs_raise_footer_errors(keep: int) -> None:
    with pytest.raises(FooterError):
        open_bytes(b"\x00" * keep)


def test_short_reads_are_refused(written: tuple[bytes, str]) -> None:
    blob, _ = written
    with pytest.raises(FormatError, match="returned"):
        open_blob(lambda offset, length: blob[offset : offset + length - 1], len(blob))


def test_toc_offset_past_the_end_is_refused() -> None:
    from lazy2dfs.estargz.footer import build_footer

    for offset in (10**6, 50):
        with pytest.raises(FooterError, match="past the end"):
            open_bytes(b"\x00" * 50 + build_footer(offset))


def test_oversized_toc_is_refused_before_parsing() -> None:
    blob, _ = _gzip_blob()
    with pytest.raises(TocTooLargeError):
        open_blob(lambda o, n: blob[o : o + n], len(blob), limits=TocLimits(max_toc_bytes=100))


def test_toc_pointing_chunks_past_the_toc_is_refused() -> None:
    entry = {
        "name": "a",
        "type": "reg",
        "size": 1,
        "offset": 5,
        "chunkDigest": "sha256:" + "0" * 64,
    }
    with pytest.raises(TocError, match="past the data"):
        open_bytes(blob_with_toc(b"\x00" * 5, {"version": 1, "entries": [entry]}))


def test_zstd_chunked_ends_with_toc_frame_and_40_byte_footer() -> None:
    blob, result = write(make_tar(FILES), WriterOptions(compression=Compression.ZSTD))
    skippable_header = b"\x50\x2a\x4d\x18\x28\x00\x00\x00"
    assert blob[-ZSTD_FOOTER_SIZE - 8 : -ZSTD_FOOTER_SIZE] == skippable_header
    assert blob.endswith(b"GnUlInUx")
    offset, compressed, plain, _ = result.annotations[
        "io.containers.zstd-chunked.manifest-position"
    ].split(":")
    assert blob[int(offset) - 8 : int(offset) - 4] == b"\x50\x2a\x4d\x18"
    toc = open_bytes(blob, result.toc_digest)
    assert toc.payload_end == int(offset) - 8 and int(compressed) > 0 and int(plain) > 0
