"""One blob's cache: bytes written at their file offsets, read back from memory or the disk,
recorded only once durable, and what survives a crash."""

import functools
import mmap
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.model_load import cache_stat, page_cache_bytes
from lazy2dfs.cache import layer
from lazy2dfs.cache.layer import DiskFullError, Gap, LayerCache
from lazy2dfs.cache.writeback import WritebackWindow
from lazy2dfs.estargz import WriterOptions
from lazy2dfs.estargz.decode import decode_segment
from lazy2dfs.estargz.layout import BlobLayout
from tests.support.estargz import make_tar, open_bytes, write

CHUNK = 64 * 1024
FILES = {"m/weights.bin": os.urandom(3 * CHUNK + 7), "m/config.json": b'{"x": 1}'}


@pytest.fixture(scope="module")
def blob() -> tuple[bytes, BlobLayout]:
    data, result = write(make_tar(FILES), WriterOptions(chunk_size=CHUNK))
    return data, BlobLayout(open_bytes(data, result.toc_digest))


def fill(cache: LayerCache, data: bytes, layout: BlobLayout, indices: list[int]) -> None:
    for index in indices:
        segment = layout.segments[index]
        decoded = decode_segment(
            segment, data[segment.start : segment.end], layout.toc.compression, 1 << 20
        )
        cache.store(segment, decoded.payloads, Gap.KNOWN, decoded.gap)


def test_present_ranges_read_back_as_written(
    tmp_path: Path, blob: tuple[bytes, BlobLayout]
) -> None:
    data, layout = blob
    cache = LayerCache(tmp_path / "c", layout)
    assert not cache.complete and cache.missing(list(layout.segments)) == list(layout.segments)
    fill(cache, data, layout, list(range(len(layout.segments))))
    assert cache.complete
    weights = FILES["m/weights.bin"]
    assert cache.read("m/weights.bin", CHUNK - 3, 10) == weights[CHUNK - 3 : CHUNK + 7]
    assert cache.read("m/config.json", 0, 8) == FILES["m/config.json"]
    # The backing file is the file: sparse until written, its full size from the start.
    backing = cache.backing_path(layout.files["m/weights.bin"])
    assert backing.read_bytes() == weights
    cache.close()


def test_bytes_just_written_read_back_from_the_page_cache(
    tmp_path: Path, blob: tuple[bytes, BlobLayout]
) -> None:
    data, layout = blob
    cache = LayerCache(tmp_path / "c", layout)
    fill(cache, data, layout, list(range(len(layout.segments))))
    weights = FILES["m/weights.bin"]
    into = memoryview(bytearray(CHUNK))
    assert cache.read_cached("m/weights.bin", CHUNK, into[:100])
    assert into[:100].tobytes() == weights[CHUNK : CHUNK + 100]
    assert cache.read_cached("m/weights.bin", CHUNK - 3, into[:10])
    assert into[:10].tobytes() == weights[CHUNK - 3 : CHUNK + 7]
    cache.close()


def test_only_flushed_segments_survive_a_restart(
    tmp_path: Path, blob: tuple[bytes, BlobLayout]
) -> None:
    data, layout = blob
    cache = LayerCache(tmp_path / "c", layout)
    fill(cache, data, layout, [1, 2])
    assert cache.flush() == 2
    fill(cache, data, layout, [3])  # written, not yet recorded: a crash now loses it
    again = LayerCache(tmp_path / "c", layout)
    assert [s.index for s in layout.segments if again.present(s)] == [1, 2]
    segment = layout.segments[1]
    assert again.gap_bytes(segment) == cache.gap_bytes(segment)
    cache.close()
    again.close()


def test_a_torn_last_record_is_cut_off_and_the_rest_kept(
    tmp_path: Path, blob: tuple[bytes, BlobLayout]
) -> None:
    data, layout = blob
    cache = LayerCache(tmp_path / "c", layout)
    fill(cache, data, layout, [0, 1])
    cache.flush()
    cache.close()
    log = tmp_path / "c/present.log"
    size = log.stat().st_size
    with log.open("r+b") as f:
        f.truncate(size - 3)  # power lost in the middle of appending the second record
    again = LayerCache(tmp_path / "c", layout)
    assert [s.index for s in layout.segments if again.present(s)] == [0]
    assert log.stat().st_size < size - 3
    fill(again, data, layout, [1])
    again.flush()
    again.close()
    assert [s.index for s in layout.segments if LayerCache(tmp_path / "c", layout).present(s)] == [
        0,
        1,
    ]


def test_a_corrupt_record_is_not_trusted(tmp_path: Path, blob: tuple[bytes, BlobLayout]) -> None:
    data, layout = blob
    cache = LayerCache(tmp_path / "c", layout)
    fill(cache, data, layout, [1])
    cache.flush()
    cache.close()
    log = tmp_path / "c/present.log"
    raw = bytearray(log.read_bytes())
    raw[0] ^= 1  # the record now names another segment; its CRC no longer matches
    log.write_bytes(bytes(raw))
    assert not LayerCache(tmp_path / "c", layout).present(layout.segments[1])


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "tiny"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_full_disk_refuses_the_write_and_marks_nothing(
    tiny_disk: Path, blob: tuple[bytes, BlobLayout]
) -> None:
    data, layout = blob
    cache = LayerCache(tiny_disk / "c", layout)
    segments = [s for s in layout.segments if s.payload_size >= CHUNK]
    with pytest.raises(DiskFullError):
        fill(cache, data, layout, [s.index for s in segments])
    assert not all(cache.present(s) for s in segments)
    cache.close()


def test_a_gap_stays_readable_while_a_flush_records_it(
    tmp_path: Path, blob: tuple[bytes, BlobLayout], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The diff ID check reads gaps while the recorder appends them to the log."""
    data, layout = blob
    cache = LayerCache(tmp_path / "c", layout)
    fill(cache, data, layout, [0])
    expected = cache.gap_bytes(layout.segments[0])
    seen: list[bytes] = []
    real_write = os.write

    def write_then_look(fd: int, records: bytes) -> int:
        seen.append(cache.gap_bytes(layout.segments[0]))  # between taking and recording
        return real_write(fd, records)

    monkeypatch.setattr(os, "write", write_then_look)
    cache.flush()
    monkeypatch.undo()
    assert seen == [expected] and cache.gap_bytes(layout.segments[0]) == expected
    cache.close()


def test_a_flush_finding_nothing_waits_for_the_one_under_way(
    tmp_path: Path, blob: tuple[bytes, BlobLayout], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The periodic flush took the pending records and is syncing them: the diff ID check's
    own flush returns only once they are recorded, so every gap can be read."""
    data, layout = blob
    cache = LayerCache(tmp_path / "c", layout)
    fill(cache, data, layout, list(range(len(layout.segments))))
    syncing, release = threading.Event(), threading.Event()
    real_sync = os.fdatasync

    def slow_sync(fd: int) -> None:
        syncing.set()
        release.wait(10)
        real_sync(fd)

    monkeypatch.setattr(os, "fdatasync", slow_sync)
    periodic = threading.Thread(target=cache.flush)
    periodic.start()
    assert syncing.wait(10)
    checked: list[bytes] = []

    def flush_then_read_gaps() -> None:
        cache.flush()
        checked.extend(cache.gap_bytes(s) for s in layout.segments)

    check = threading.Thread(target=flush_then_read_gaps)
    check.start()
    check.join(0.2)
    assert check.is_alive()  # waiting for the flush under way, not reading unrecorded gaps
    release.set()
    periodic.join(10)
    check.join(10)
    assert len(checked) == len(layout.segments)
    cache.close()


def test_the_backing_files_keep_their_last_pages_until_the_complete_layer_drops_them(
    tmp_path: Path, blob: tuple[bytes, BlobLayout], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bytes written more than a window ago leave the page cache once on the disk, the last
    ones stay for readers at the fetch's heels; the complete layer drops the rest, and every
    byte reads back as written, from the disk."""
    monkeypatch.setattr(layer, "WritebackWindow", functools.partial(WritebackWindow, 2 * CHUNK))
    data, layout = blob
    cache = LayerCache(tmp_path / "c", layout)
    weights = FILES["m/weights.bin"]
    fill(cache, data, layout, [0, 1, 2])  # up to the first chunk of the weights
    cache.flush()  # on the disk: once out of the window, its pages may go
    fill(cache, data, layout, [3, 4, 5, 6])
    backing = cache.backing_path(layout.files["m/weights.bin"])
    fd = os.open(backing, os.O_RDONLY)
    try:
        assert cache_stat(fd, 0, CHUNK).nr_cache == 0
        assert cache_stat(fd, 2 * CHUNK, CHUNK).nr_cache == CHUNK // mmap.PAGESIZE
        held = memoryview(bytearray(CHUNK))
        assert cache.read_cached("m/weights.bin", 2 * CHUNK, held)
        assert held.tobytes() == weights[2 * CHUNK : 3 * CHUNK]
        cache.flush()
        cache.drop_pages()
        assert page_cache_bytes([tmp_path / "c" / "data"]) == 0
    finally:
        os.close(fd)
    assert cache.read("m/weights.bin", 0, len(weights)) == weights  # from the disk
    cache.close()


def test_a_chunk_read_back_for_the_diff_id_comes_in_bounded_pieces(
    tmp_path: Path, blob: tuple[bytes, BlobLayout], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunk can be a whole file: hashing the layer never holds one whole in memory."""
    data, layout = blob
    cache = LayerCache(tmp_path / "c", layout)
    fill(cache, data, layout, list(range(len(layout.segments))))
    whole = b"".join(bytes(piece) for piece in cache.stream())
    monkeypatch.setattr(layer, "_STREAM_BYTES", 4096)
    pieces = [bytes(piece) for piece in cache.stream()]
    assert b"".join(pieces) == whole and FILES["m/weights.bin"] in whole
    assert max(len(piece) for piece in pieces) <= 4096
    cache.close()
