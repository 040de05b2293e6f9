"""A complete layer's diff ID, rebuilt from its cache, and its tar headers held against the
TOC the mount serves."""

import json
import os
import tarfile
from pathlib import Path

import pytest

from lazy2dfs.cache.layer import Gap, LayerCache
from lazy2dfs.estargz import Compression, WriterOptions
from lazy2dfs.estargz.decode import decode_segment
from lazy2dfs.estargz.layout import BlobLayout
from lazy2dfs.estargz.toc import DEFAULT_LIMITS, build_toc
from lazy2dfs.layers.verify import LayerMismatchError, diff_id
from tests.support.estargz import make_tar, open_bytes, write

CHUNK = 64 * 1024


def tar_with_everything() -> bytes:
    link = tarfile.TarInfo("bin/sh")
    link.type = tarfile.SYMTYPE
    link.linkname = "busybox"
    device = tarfile.TarInfo("dev/null")
    device.type = tarfile.CHRTYPE
    device.devmajor, device.devminor = 1, 3
    hard = tarfile.TarInfo("bin/copy")
    hard.type = tarfile.LNKTYPE
    hard.linkname = "bin/busybox"
    return make_tar(
        {"bin/busybox": os.urandom(3 * CHUNK), "etc/x": b"x"}, trailing=[link, device, hard]
    )


def complete_cache(
    tmp_path: Path,
    blob: bytes,
    layout: BlobLayout,
    compression: Compression,
    backwards: bool = False,
) -> LayerCache:
    cache = LayerCache(tmp_path / "c", layout)
    for segment in reversed(layout.segments) if backwards else layout.segments:
        decoded = decode_segment(segment, blob[segment.start : segment.end], compression, 1 << 20)
        cache.store(segment, decoded.payloads, Gap.KNOWN, decoded.gap)
    assert cache.complete
    return cache


@pytest.mark.parametrize("compression", [Compression.GZIP, Compression.ZSTD])
def test_the_rebuilt_stream_hashes_to_the_writers_diff_id(
    tmp_path: Path, compression: Compression
) -> None:
    blob, result = write(
        tar_with_everything(), WriterOptions(chunk_size=CHUNK, compression=compression)
    )
    layout = BlobLayout(open_bytes(blob, result.toc_digest))
    cache = complete_cache(tmp_path, blob, layout, compression)
    assert diff_id(cache, blob[layout.toc.payload_end :]) == result.diff_id


def test_segments_stored_out_of_order_hash_to_the_diff_id(tmp_path: Path) -> None:
    """Last segment first, as a model loaded in tensor order brings them: the stream is
    rebuilt in blob order."""
    blob, result = write(tar_with_everything(), WriterOptions(chunk_size=CHUNK))
    layout = BlobLayout(open_bytes(blob, result.toc_digest))
    cache = complete_cache(tmp_path, blob, layout, Compression.GZIP, backwards=True)
    assert diff_id(cache, blob[layout.toc.payload_end :]) == result.diff_id


@pytest.mark.parametrize(
    ("field", "value"),
    [("mode", 0o4755), ("uid", 1000), ("linkName", "/etc/shadow"), ("name", "bin/other")],
)
def test_a_toc_that_lies_about_the_tar_is_refused(
    tmp_path: Path, field: str, value: object
) -> None:
    """The same bytes under a TOC that claims other metadata (what a zstd:chunked TOC outside
    the hashed stream could do): the mount would serve what the tar does not say."""
    blob, result = write(tar_with_everything(), WriterOptions(chunk_size=CHUNK))
    honest = open_bytes(blob, result.toc_digest)
    entries = [e.to_json() for e in honest.entries]
    target = "bin/busybox" if field in ("mode", "uid") else "bin/sh"
    for entry in entries:
        if entry["name"] == target and entry["type"] != "chunk":
            entry[field] = value
    document = {"version": 1, "entries": entries}
    lying = build_toc(
        json.dumps(document).encode(),
        payload_end=honest.payload_end,
        compression=Compression.GZIP,
        limits=DEFAULT_LIMITS,
    )
    layout = BlobLayout(lying)
    cache = complete_cache(tmp_path, blob, layout, Compression.GZIP)
    with pytest.raises(LayerMismatchError, match=r"differs from its TOC entry|not in"):
        diff_id(cache, blob[honest.payload_end :])


def test_an_assumed_empty_gap_that_was_not_is_caught(tmp_path: Path) -> None:
    blob, result = write(tar_with_everything(), WriterOptions(chunk_size=CHUNK))
    layout = BlobLayout(open_bytes(blob, result.toc_digest))
    cache = complete_cache(tmp_path, blob, layout, Compression.GZIP)
    # A segment's gap dropped (as a copy that wrongly assumed it empty would): the stream
    # rebuilt is another one, and its digest says so.
    final = next(s for s in layout.segments if cache.gap_bytes(s) and s.chunks)
    other = LayerCache(tmp_path / "d", layout)
    for segment in layout.segments:
        decoded = decode_segment(
            segment, blob[segment.start : segment.end], Compression.GZIP, 1 << 20
        )
        gap = b"" if segment is final else decoded.gap
        state = Gap.ASSUMED_EMPTY if segment is final else Gap.KNOWN
        other.store(segment, decoded.payloads, state, gap)
    with pytest.raises(LayerMismatchError):
        diff_id(other, blob[layout.toc.payload_end :])
