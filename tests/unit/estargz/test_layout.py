"""Segments: the unit of fetching and caching, and why their gaps let the diff ID be checked."""

import hashlib
import os

import pytest

from lazy2dfs.estargz import CompressedDataError, Compression, WriterOptions
from lazy2dfs.estargz.decode import decode_segment
from lazy2dfs.estargz.layout import BlobLayout
from lazy2dfs.estargz.members import inflate_gzip_members, read_zstd_frames
from tests.support.estargz import make_tar, open_bytes, write

CHUNK = 64 * 1024
FILES = {"a/big.bin": os.urandom(3 * CHUNK + 5), "a/small": b"x" * 10, "b/empty": b""}


@pytest.mark.parametrize("compression", [Compression.GZIP, Compression.ZSTD])
def test_segments_tile_the_payload_area_and_rebuild_the_tar_stream(
    compression: Compression,
) -> None:
    blob, result = write(make_tar(FILES), WriterOptions(chunk_size=CHUNK, compression=compression))
    toc = open_bytes(blob, result.toc_digest)
    layout = BlobLayout(toc)
    assert layout.segments[0].start == 0 and layout.segments[-1].end == toc.payload_end
    for left, right in zip(layout.segments, layout.segments[1:], strict=False):
        assert left.end == right.start
    stream = hashlib.sha256()
    for segment in layout.segments:
        decoded = decode_segment(segment, blob[segment.start : segment.end], compression, 1 << 20)
        position = 0
        taken = 0
        for chunk, payload in zip(segment.chunks, decoded.payloads, strict=True):
            before = chunk.inner_offset - position
            stream.update(decoded.gap[taken : taken + before])
            taken += before
            stream.update(payload)
            position = chunk.inner_offset + chunk.size
        stream.update(decoded.gap[taken:])
    tail = blob[toc.payload_end :]
    stream.update(
        inflate_gzip_members(tail, 1 << 24)
        if compression is Compression.GZIP
        else read_zstd_frames(tail, 1 << 24)
    )
    assert "sha256:" + stream.hexdigest() == result.diff_id
    big = layout.file("a/big.bin")
    assert big is not None and len(big.chunks) == 4
    assert [layout.is_final(c) for c in big.chunks] == [False, False, False, True]
    assert layout.file("b/empty") is None


def test_a_segment_that_inflates_past_its_entries_is_refused() -> None:
    blob, result = write(make_tar(FILES), WriterOptions(chunk_size=CHUNK))
    layout = BlobLayout(open_bytes(blob, result.toc_digest))
    # The last chunk of a/big.bin is followed by the next entries' headers: a tight limit
    # on its gap is what stops a member that inflates to far more than that.
    final = next(s for s in layout.segments if any(layout.is_final(c) for c in s.chunks))
    with pytest.raises(CompressedDataError, match="more than"):
        decode_segment(final, blob[final.start : final.end], Compression.GZIP, 16)


def test_a_segment_of_the_wrong_length_is_refused() -> None:
    blob, result = write(make_tar(FILES), WriterOptions(chunk_size=CHUNK))
    segment = BlobLayout(open_bytes(blob, result.toc_digest)).segments[1]
    with pytest.raises(CompressedDataError):
        decode_segment(segment, blob[segment.start : segment.end - 1], Compression.GZIP, 1 << 20)
