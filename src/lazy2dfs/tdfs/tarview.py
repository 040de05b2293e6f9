"""A read-only, seekable tar archive of an allotment, made up on the fly from its source files.

The eStargz writer takes a tar; writing one to disk first would copy every weight file once
more (model weights are gigabytes). This view serves the tar's bytes from headers built in
memory and from the source files themselves, at any offset, so the writer reads each source
once. Entries are normalised so that the archive depends only on the files' contents, modes and
destinations: names sorted, parent directories added (0755), owner 0:0 without names, every
time 2000-01-01 (as the 2DFS builder).
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Final

from lazy2dfs.tdfs.errors import BuildSpecError
from lazy2dfs.tdfs.spec import FileCopy

FIXED_MTIME: Final = 946684800  # 2000-01-01T00:00:00Z, as the 2DFS builder writes
_BLOCK: Final = tarfile.BLOCKSIZE


@dataclass(frozen=True, slots=True)
class _Piece:
    """``length`` bytes of the archive at ``start``: header bytes, or a slice of a source file."""

    start: int
    length: int
    data: bytes | None = None
    path: Path | None = None


def file_mode(path: Path) -> int:
    """The permission bits an allotment records for a source (part of its cache key)."""
    return path.stat().st_mode & 0o777


class TarView(io.RawIOBase):
    """The tar of ``files``; sizes are taken when it is made and checked while reading."""

    def __init__(self, files: Sequence[FileCopy]) -> None:
        super().__init__()
        self._pieces: list[_Piece] = []
        self._size = 0
        self._position = 0
        self._source: tuple[Path, IO[bytes]] | None = None  # the file last read from
        for name, source in _entries(files):
            info = tarfile.TarInfo(name)
            info.mtime = FIXED_MTIME
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if source is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                self._add_bytes(info.tobuf(tarfile.PAX_FORMAT))
                continue
            info.type, info.mode = tarfile.REGTYPE, file_mode(source)
            info.size = source.stat().st_size
            self._add_bytes(info.tobuf(tarfile.PAX_FORMAT))
            if info.size:
                self._pieces.append(_Piece(self._size, info.size, path=source))
                self._size += info.size
            self._add_bytes(b"\x00" * (-info.size % _BLOCK))
        self._add_bytes(b"\x00" * (2 * _BLOCK))

    def _add_bytes(self, data: bytes) -> None:
        if data:
            self._pieces.append(_Piece(self._size, len(data), data=data))
            self._size += len(data)

    @property
    def size(self) -> int:
        return self._size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._position, os.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._position = base + offset
        return self._position

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and self._position < self._size:
            piece = self._piece_at(self._position)
            offset = self._position - piece.start
            count = min(len(view) - done, piece.length - offset)
            chunk = self._read_piece(piece, offset, count)
            view[done : done + count] = chunk
            done += count
            self._position += count
        return done

    def _piece_at(self, position: int) -> _Piece:
        low, high = 0, len(self._pieces) - 1
        while low < high:
            middle = (low + high + 1) // 2
            if self._pieces[middle].start <= position:
                low = middle
            else:
                high = middle - 1
        return self._pieces[low]

    def _read_piece(self, piece: _Piece, offset: int, count: int) -> bytes:
        if piece.data is not None:
            return piece.data[offset : offset + count]
        assert piece.path is not None
        if self._source is None or self._source[0] != piece.path:
            self._close_source()
            self._source = (piece.path, piece.path.open("rb"))
        source = self._source[1]
        source.seek(offset)
        chunk = source.read(count)
        if len(chunk) != count:
            raise BuildSpecError(f"{piece.path} changed size while it was being read")
        return chunk

    def _close_source(self) -> None:
        if self._source is not None:
            self._source[1].close()
            self._source = None

    def close(self) -> None:
        self._close_source()
        super().close()


def _entries(files: Sequence[FileCopy]) -> list[tuple[str, Path | None]]:
    """Names in sorted order: parent directories (``None``) and files."""
    entries: dict[str, Path | None] = {}
    for file in files:
        for parent in PurePosixPath(file.dst).parents:
            if parent.as_posix() != ".":
                entries.setdefault(parent.as_posix(), None)
    for file in files:
        if file.dst in entries:
            raise BuildSpecError(f"{file.dst!r} is both a file and a directory of the allotment")
        entries[file.dst] = file.src
    return sorted(entries.items())
