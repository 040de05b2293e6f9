import dataclasses
import gzip
import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest
import zstandard

from lazy2dfs.estargz import Compression, open_blob
from lazy2dfs.tdfs import AllotmentSpec, BuildSpecError, EncodeOptions, FileCopy
from lazy2dfs.tdfs.cache import AllotmentCache
from lazy2dfs.tdfs.encode import cache_key, encode_allotment
from lazy2dfs.tdfs.tarview import FIXED_MTIME, TarView

OPTIONS = EncodeOptions(chunk_size=64 * 1024, workers=2)


@pytest.fixture
def spec(tmp_path: Path) -> AllotmentSpec:
    weights = tmp_path / "src" / "weights.bin"
    weights.parent.mkdir()
    weights.write_bytes(os.urandom(300_000))
    config = tmp_path / "src" / "config.json"
    config.write_bytes(b'{"layers": 4}')
    config.chmod(0o600)
    return AllotmentSpec(
        1, 0, (FileCopy(weights, "model/block1/weights.bin"), FileCopy(config, "model/cfg.json"))
    )


def test_tar_view_is_a_normalised_tar_of_the_sources(spec: AllotmentSpec) -> None:
    view = TarView(spec.files)
    data = io.BufferedReader(view).read()
    assert len(data) == view.size
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        members = archive.getmembers()
        assert [m.name for m in members] == [
            "model",
            "model/block1",
            "model/block1/weights.bin",
            "model/cfg.json",
        ]
        assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {
            (FIXED_MTIME, 0, 0, "", "")
        }
        assert [m.mode for m in members] == [0o755, 0o755, 0o644, 0o600]
        payload = archive.extractfile("model/block1/weights.bin")
        assert payload is not None
        assert payload.read() == spec.files[0].src.read_bytes()


def test_tar_view_seeks_anywhere(spec: AllotmentSpec) -> None:
    whole = io.BufferedReader(TarView(spec.files)).read()
    view = TarView(spec.files)
    for offset in (0, 511, 512, 1536, 100_000, len(whole) - 3):
        view.seek(offset)
        assert view.read(700) == whole[offset : offset + 700]
    view.seek(-10, os.SEEK_END)
    assert view.read() == whole[-10:]


def test_a_file_that_is_also_a_directory_is_refused(spec: AllotmentSpec) -> None:
    clash = (*spec.files, FileCopy(spec.files[1].src, "model"))
    with pytest.raises(BuildSpecError, match="both a file and a directory"):
        TarView(clash)


@pytest.mark.parametrize("compression", [Compression.ZSTD, Compression.GZIP])
def test_allotment_is_a_reproducible_chunked_blob(
    spec: AllotmentSpec, tmp_path: Path, compression: Compression
) -> None:
    options = dataclasses.replace(OPTIONS, compression=compression)
    first = encode_allotment(spec, AllotmentCache(tmp_path / "c1"), options)
    second = encode_allotment(spec, AllotmentCache(tmp_path / "c2"), options)
    assert not first.cached and not second.cached
    assert first.blob == second.blob
    blob = (tmp_path / "c1" / "blobs" / "sha256" / first.blob.digest[7:]).read_bytes()
    assert "sha256:" + hashlib.sha256(blob).hexdigest() == first.blob.digest
    assert len(blob) == first.blob.size
    # A valid tar.gz or tar.zst: any runtime that knows the media type can apply it.
    if compression is Compression.GZIP:
        tar = gzip.decompress(blob)
    else:
        tar = zstandard.ZstdDecompressor().stream_reader(blob, read_across_frames=True).read()
    assert "sha256:" + hashlib.sha256(tar).hexdigest() == first.blob.diff_id
    assert len(tar) == first.blob.uncompressed_size
    toc = open_blob(
        lambda offset, length: blob[offset : offset + length],
        len(blob),
        expected_toc_digest=first.blob.toc_digest,
    )
    chunks = toc.chunks_for("model/block1/weights.bin", 0, 300_000)
    assert len(chunks) == 5  # 300 000 bytes in 64 KiB chunks

    entry = first.field_allotment()
    assert (entry.row, entry.col, entry.size) == (1, 0, first.blob.size)
    assert entry.blob_digest == first.blob.digest
    assert "sha256:" + (entry.toc_digest or "") == first.blob.toc_digest
    assert entry.compression == ("zstd" if compression is Compression.ZSTD else None)


def test_unchanged_inputs_hit_the_cache_and_any_change_misses(
    spec: AllotmentSpec, tmp_path: Path
) -> None:
    cache = AllotmentCache(tmp_path / "cache")
    built = encode_allotment(spec, cache, OPTIONS)
    again = encode_allotment(spec, cache, OPTIONS)
    assert again.cached and again.blob == built.blob

    moved = tmp_path / "elsewhere.bin"
    moved.write_bytes(spec.files[0].src.read_bytes())
    same_content = AllotmentSpec(1, 0, (FileCopy(moved, spec.files[0].dst), spec.files[1]))
    assert cache_key(same_content, OPTIONS) == cache_key(spec, OPTIONS)

    keys = {cache_key(spec, OPTIONS)}
    keys.add(cache_key(spec, EncodeOptions(chunk_size=32 * 1024)))
    renamed = AllotmentSpec(1, 0, (FileCopy(spec.files[0].src, "other.bin"), spec.files[1]))
    keys.add(cache_key(renamed, OPTIONS))
    spec.files[1].src.chmod(0o644)
    keys.add(cache_key(spec, OPTIONS))
    spec.files[1].src.write_bytes(b'{"layers": 5}')
    keys.add(cache_key(spec, OPTIONS))
    assert len(keys) == 5

    changed = encode_allotment(spec, cache, OPTIONS)
    assert not changed.cached and changed.blob.digest != built.blob.digest


def test_a_damaged_cache_entry_is_encoded_again(spec: AllotmentSpec, tmp_path: Path) -> None:
    cache = AllotmentCache(tmp_path / "cache")
    built = encode_allotment(spec, cache, OPTIONS)
    cache.blobs.path(built.blob.digest).write_bytes(b"truncated")
    rebuilt = encode_allotment(spec, cache, OPTIONS)
    assert not rebuilt.cached and rebuilt.blob == built.blob
    for record in (tmp_path / "cache" / "allotments").iterdir():
        record.write_text("{not json")
    assert not encode_allotment(spec, cache, OPTIONS).cached
    assert not list((tmp_path / "cache" / "blobs").glob(".partial-*"))
