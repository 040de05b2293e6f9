"""Writer output: valid tar.gz for every reader, reproducible, landmarks and order as specified."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import zstandard

from lazy2dfs.estargz import (
    NO_PREFETCH_LANDMARK,
    PREFETCH_LANDMARK,
    TOC_DIGEST_ANNOTATION,
    UNCOMPRESSED_SIZE_ANNOTATION,
    Compression,
    EntryType,
    SourceError,
    WriterOptions,
    write_blob_from_directory,
    write_blob_from_tar,
)
from tests.support.estargz import make_tar, open_bytes, read_file, write

FILES = {
    "model/layer0.bin": os.urandom(150_000),
    "model/layer1.bin": bytes(100_000),
    "model/config.json": b'{"layers": 2}',
    "README": b"weights\n",
}
OPTIONS = WriterOptions(chunk_size=32_768)


def decompress(blob: bytes, compression: Compression) -> bytes:
    if compression is Compression.GZIP:
        return gzip.decompress(blob)
    reader = zstandard.ZstdDecompressor().stream_reader(blob, read_across_frames=True)
    return reader.read()  # skippable frames (TOC, footer) decode to nothing


@pytest.mark.parametrize("compression", list(Compression))
def test_python_tarfile_reads_the_blob(compression: Compression) -> None:
    blob, _ = write(make_tar(FILES), WriterOptions(chunk_size=32_768, compression=compression))
    with tarfile.open(fileobj=io.BytesIO(decompress(blob, compression))) as tar:
        contents = {m.name: tar.extractfile(m).read() for m in tar if m.isreg()}  # type: ignore[union-attr]
    assert {k: v for k, v in contents.items() if k in FILES} == FILES
    assert contents[NO_PREFETCH_LANDMARK] == b"\x0f"
    if compression is Compression.GZIP:
        assert list(contents)[-1] == "stargz.index.json"


@pytest.mark.parametrize(
    ("compression", "flag"), [(Compression.GZIP, "-z"), (Compression.ZSTD, "--zstd")]
)
def test_gnu_tar_extracts_the_blob(tmp_path: Path, compression: Compression, flag: str) -> None:
    assert shutil.which("tar") and shutil.which("zstd"), "GNU tar and zstd missing: make deps"
    blob, _ = write(make_tar(FILES), WriterOptions(chunk_size=32_768, compression=compression))
    (tmp_path / "blob").write_bytes(blob)
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["tar", flag, "-xf", str(tmp_path / "blob"), "-C", str(out)], check=True)
    for name, data in FILES.items():
        assert (out / name).read_bytes() == data


def test_diff_id_and_uncompressed_size_describe_the_tar() -> None:
    blob, result = write(make_tar(FILES), OPTIONS)
    plain = gzip.decompress(blob)
    assert result.diff_id == "sha256:" + hashlib.sha256(plain).hexdigest()
    assert result.uncompressed_size == len(plain)
    assert result.blob_digest == "sha256:" + hashlib.sha256(blob).hexdigest()
    assert result.blob_size == len(blob)
    assert result.annotations == {
        TOC_DIGEST_ANNOTATION: result.toc_digest,
        UNCOMPRESSED_SIZE_ANNOTATION: str(len(plain)),
    }
    assert open_bytes(blob).digest == result.toc_digest


def test_each_chunk_starts_its_own_gzip_member() -> None:
    blob, _ = write(make_tar(FILES), OPTIONS)
    toc = open_bytes(blob)
    chunks = list(toc.iter_chunks())
    assert len(chunks) == 5 + 4 + 1 + 1 + 1  # layer0, layer1, config, README, landmark
    for chunk in chunks:
        assert blob[chunk.compressed_offset : chunk.compressed_offset + 2] == b"\x1f\x8b"
        assert chunk.inner_offset == 0
    entries = [e for e in toc.entries if e.name == "model/layer0.bin"]
    assert entries[0].type is EntryType.REG and entries[0].chunk_size == 32_768
    assert [e.type for e in entries[1:]] == [EntryType.CHUNK] * 4
    assert entries[0].digest == "sha256:" + hashlib.sha256(FILES["model/layer0.bin"]).hexdigest()


@pytest.mark.parametrize("compression", list(Compression))
def test_output_is_reproducible_across_runs_and_worker_counts(compression: Compression) -> None:
    tar = make_tar(FILES)
    blobs = {
        write(tar, WriterOptions(chunk_size=32_768, compression=compression, workers=n))[0]
        for n in (1, 2, 3, 1)
    }
    assert len(blobs) == 1


def test_fixed_mtime_replaces_input_times() -> None:
    blob, _ = write(make_tar(FILES), WriterOptions(mtime=946_684_800))
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as tar:
        assert {m.mtime for m in tar} == {946_684_800}
    modtime = open_bytes(blob).resolve("README").modtime
    assert modtime is not None and modtime.isoformat() == "2000-01-01T00:00:00+00:00"
    default_blob, _ = write(make_tar(FILES))
    assert open_bytes(default_blob).resolve("README").modtime.timestamp() == 1_000_000  # type: ignore[union-attr]


def test_gzip_level_is_applied() -> None:
    sizes = [len(write(make_tar(FILES), WriterOptions(level=level))[0]) for level in (0, 9)]
    assert sizes[0] > sum(len(v) for v in FILES.values()) > sizes[1]


def test_prioritised_files_come_first_then_the_landmark() -> None:
    options = WriterOptions(prioritized=["/model/config.json", "README"])
    blob, _ = write(make_tar(FILES), options)
    toc = open_bytes(blob)
    order = [e.name for e in toc.entries if e.type is not EntryType.CHUNK]
    assert order[:3] == ["model/config.json", "README", PREFETCH_LANDMARK]
    assert read_file(blob, toc, PREFETCH_LANDMARK) == b"\x0f"
    landmark = toc.resolve(PREFETCH_LANDMARK)
    assert toc.prefetch_size == landmark.offset > toc.resolve("README").offset
    assert PREFETCH_LANDMARK not in toc.children("")


def test_no_prefetch_landmark_comes_first_when_nothing_is_prioritised() -> None:
    blob, _ = write(make_tar(FILES))
    toc = open_bytes(blob)
    assert toc.entries[0].name == NO_PREFETCH_LANDMARK and toc.prefetch_size == 0


def test_prioritised_directory_brings_its_subtree_and_hardlink_its_target() -> None:
    link = tarfile.TarInfo("alias")
    link.type, link.linkname = tarfile.LNKTYPE, "README"
    model_dir = tarfile.TarInfo("model")
    model_dir.type = tarfile.DIRTYPE
    blob, _ = write(
        make_tar(FILES, extra=[model_dir], trailing=[link]),
        WriterOptions(prioritized=["alias", "model"]),
    )
    order = [e.name for e in open_bytes(blob).entries if e.type is not EntryType.CHUNK]
    landmark = order.index(PREFETCH_LANDMARK)
    assert order[:2] == ["README", "alias"] and order[2] == "model"
    assert set(order[:landmark]) == {"README", "alias", "model", *[f for f in FILES if "/" in f]}


def test_missing_prioritised_file_is_an_error() -> None:
    with pytest.raises(SourceError, match="not in the input"):
        write(make_tar(FILES), WriterOptions(prioritized=["nope"]))


def test_existing_toc_and_landmarks_in_the_input_are_replaced() -> None:
    blob, _ = write(make_tar(FILES))
    again, _ = write(gzip.decompress(blob))
    names = [e.name for e in open_bytes(again).entries if e.type is not EntryType.CHUNK]
    assert names.count(NO_PREFETCH_LANDMARK) == 1 and "stargz.index.json" not in names
    assert again == write(gzip.decompress(again))[0]  # converting an eStargz blob is idempotent


def test_duplicate_names_keep_the_last_entry() -> None:
    first = make_tar({"a": b"old"})[: 512 + 512]  # header + one data block, no end marker
    tar = first + make_tar({"a": b"new"})
    blob, _ = write(tar)
    toc = open_bytes(blob)
    assert read_file(blob, toc, "a") == b"new"


@pytest.mark.parametrize("name", ["../escape", "/abs/olute", "a/../../b"])
def test_unsafe_input_names_are_rejected(name: str) -> None:
    with pytest.raises(SourceError):
        write(make_tar({name: b"x"}))


def test_xattrs_from_pax_headers_reach_the_toc() -> None:
    info = tarfile.TarInfo("f")
    info.pax_headers = {"SCHILY.xattr.user.model": "v1", "SCHILY.xattr.security.capability": "\x01"}
    blob, _ = write(make_tar({}, extra=[info]))
    assert open_bytes(blob).resolve("f").xattrs == {
        "user.model": b"v1",
        "security.capability": b"\x01",
    }


def test_non_seekable_and_compressed_input_is_accepted() -> None:
    class Pipe(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self._inner = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: bytearray) -> int:  # type: ignore[override]
            return self._inner.readinto(buffer)

    out = io.BytesIO()
    write_blob_from_tar(Pipe(gzip.compress(make_tar(FILES))), out, OPTIONS)  # type: ignore[arg-type]
    assert out.getvalue() == write(make_tar(FILES), OPTIONS)[0]


def test_garbage_input_is_a_source_error() -> None:
    with pytest.raises(SourceError):
        write(b"this is not a tar file" * 100)


@pytest.mark.parametrize(
    "options",
    [
        {"chunk_size": 0},
        {"level": 10},
        {"workers": 0},
        {"level": 0, "compression": Compression.ZSTD},
    ],
)
def test_bad_options_are_refused(options: dict[str, object]) -> None:
    with pytest.raises(SourceError):
        WriterOptions(**options)  # type: ignore[arg-type]


def test_directory_source(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "w.bin").write_bytes(os.urandom(70_000))
    (root / "empty").write_bytes(b"")
    os.link(root / "sub" / "w.bin", root / "sub" / "w2.bin")
    os.symlink("sub/w.bin", root / "link")
    out = io.BytesIO()
    result = write_blob_from_directory(root, out, WriterOptions(chunk_size=32_768, mtime=0))
    blob = out.getvalue()
    toc = open_bytes(blob, result.toc_digest)
    assert read_file(blob, toc, "sub/w2.bin") == (root / "sub" / "w.bin").read_bytes()
    assert toc.get("sub/w2.bin").type is EntryType.HARDLINK  # type: ignore[union-attr]
    assert toc.resolve("link").link_name == "sub/w.bin"
    assert toc.children("") == ("empty", "link", "sub")
    with pytest.raises(SourceError):
        write_blob_from_directory(root / "empty", io.BytesIO())
