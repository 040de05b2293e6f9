"""Backing files written and read around the page cache: every byte back as written, whatever
the alignment, and no copy of them left in the page cache."""

import itertools
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.model_load import page_cache_bytes
from lazy2dfs.cache import direct
from lazy2dfs.cache.direct import ALIGN, STAGE_BYTES, Descriptors

SIZE = 3 * STAGE_BYTES + 5 * ALIGN + 123


@pytest.fixture(params=["direct", "buffered"])
def files(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Descriptors]:
    path = tmp_path / "backing"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.ftruncate(fd, SIZE)
    second = direct.open_direct(path) if request.param == "direct" else None
    if request.param == "direct" and second is None:
        pytest.skip(f"{tmp_path} refuses O_DIRECT")
    opened = Descriptors(fd, second)
    yield opened
    opened.close()


def pieces_of(size: int, seed: int) -> list[tuple[int, int]]:
    """Consecutive (offset, length) ranges covering ``size`` bytes, cut anywhere."""
    rng = random.Random(seed)
    cuts = sorted({0, size, *(rng.randrange(size) for _ in range(12)), ALIGN, 2 * ALIGN - 1})
    return [(a, b - a) for a, b in itertools.pairwise(cuts)]


def test_ranges_cut_anywhere_read_back_as_written(files: Descriptors) -> None:
    content = os.urandom(SIZE)
    # Written out of order, as segments arrive.
    for offset, length in reversed(pieces_of(SIZE, seed=1)):
        direct.write(files, memoryview(content)[offset : offset + length], offset)
    assert direct.read(files, SIZE, 0) == content
    for offset, length in pieces_of(SIZE, seed=2):
        assert direct.read(files, length, offset) == content[offset : offset + length]
        joined = b"".join(bytes(p) for p in direct.pieces(files, length, offset))
        assert joined == content[offset : offset + length]
    # At the end of the file: what there is.
    assert direct.read(files, 4 * ALIGN, SIZE - 10) == content[-10:]


def test_bytes_written_leave_no_copy_in_the_page_cache(tmp_path: Path) -> None:
    """The FUSE file's pages are the one copy a model server maps; the backing file keeps
    only the pages where two unaligned ranges meet."""
    path = tmp_path / "backing"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    second = direct.open_direct(path)
    if second is None:
        pytest.skip(f"{tmp_path} refuses O_DIRECT")
    files = Descriptors(fd, second)
    os.ftruncate(fd, SIZE)
    content = os.urandom(SIZE)
    middle = STAGE_BYTES + 7
    direct.write(files, content[:middle], 0)
    direct.write(files, content[middle:], middle)
    assert direct.read(files, SIZE, 0) == content
    assert page_cache_bytes([tmp_path]) <= 2 * ALIGN  # the page they share, the last one
    files.close()


def test_a_piece_is_gone_once_the_next_is_taken(files: Descriptors) -> None:
    if files.direct is None:
        pytest.skip("one piece only without O_DIRECT")
    direct.write(files, os.urandom(SIZE), 0)
    reading = direct.pieces(files, SIZE, 0)
    first = next(reading)
    next(reading)
    with pytest.raises(ValueError, match="released"):
        bytes(first)
    reading.close()


def test_more_readers_at_once_than_buffers_kept(files: Descriptors) -> None:
    content = os.urandom(SIZE)
    direct.write(files, content, 0)
    readers = [direct.pieces(files, 2 * ALIGN, n * ALIGN) for n in range(12)]
    firsts = [bytes(next(r)) for r in readers]  # each holds a staging buffer
    rests = [b"".join(bytes(p) for p in r) for r in readers]
    for n, (first, rest) in enumerate(zip(firsts, rests, strict=True)):
        assert first + rest == content[n * ALIGN : (n + 2) * ALIGN]
