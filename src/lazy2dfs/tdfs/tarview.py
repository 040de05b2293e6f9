"""A read-only, seekable tar archive of an allotment, made up on the fly from its source files.

The eStargz writer takes a tar; writing one to disk first would copy every weight file once
more (model weights are gigabytes). This view serves the tar's bytes from headers built in
memory and from the source files themselves, at any offset, so the writer reads each source
once. Entries are normalised so that the archive depends only on the files' contents, modes and
destinations: names sorted, parent directories added (0755), owner 0:0 without names, every
time 2000-01-01 (as the 2DFS builder).
"""

from __future__ import annotations

import tarfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import IO, Final

from lazy2dfs.estargz.pieces import Piece, PieceStream
from lazy2dfs.tdfs.errors import BuildSpecError
from lazy2dfs.tdfs.spec import FileCopy

FIXED_MTIME: Final = 946684800  # 2000-01-01T00:00:00Z, as the 2DFS builder writes
_BLOCK: Final = tarfile.BLOCKSIZE


def file_mode(path: Path) -> int:
    """The permission bits an allotment records for a source (part of its cache key)."""
    return path.stat().st_mode & 0o777


class TarView(PieceStream):
    """The tar of ``files``; sizes are taken when it is made and checked while reading."""

    def __init__(self, files: Sequence[FileCopy]) -> None:
        super().__init__()
        self._source: tuple[Path, IO[bytes]] | None = None  # the file last read from
        for name, source in _entries(files):
            info = tarfile.TarInfo(name)
            info.mtime = FIXED_MTIME
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if source is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                self.add(info.tobuf(tarfile.PAX_FORMAT))
                continue
            info.type, info.mode = tarfile.REGTYPE, file_mode(source)
            info.size = source.stat().st_size
            self.add(info.tobuf(tarfile.PAX_FORMAT))
            self.add_external(info.size, source)
            self.add(b"\x00" * (-info.size % _BLOCK))
        self.add(b"\x00" * (2 * _BLOCK))

    def read_external(self, piece: Piece, offset: int, count: int) -> bytes:
        assert isinstance(piece.source, Path)
        path = piece.source
        if self._source is None or self._source[0] != path:
            self._close_source()
            self._source = (path, path.open("rb"))
        source = self._source[1]
        source.seek(offset)
        chunk = source.read(count)
        if len(chunk) != count:
            raise BuildSpecError(f"{path} changed size while it was being read")
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
