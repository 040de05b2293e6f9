"""A read-only, seekable stream laid out as pieces end to end: bytes held in memory, and
stretches whose bytes live elsewhere (a source file, a cache) and are read only when asked.

Tar streams are assembled this way twice: the builder's view of an allotment (headers in memory,
contents from the source files) and the verifier's view of a cached layer (headers from the
cache, contents not needed at all).
"""

from __future__ import annotations

import bisect
import io
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Piece:
    """``length`` bytes of the stream at ``start``: ``data``, or an external stretch that
    ``PieceStream.read_external`` produces (``source`` says what it is)."""

    start: int
    length: int
    data: bytes | None = None
    source: object = None


class PieceStream(io.RawIOBase):
    """The stream of the pieces added, in order."""

    def __init__(self) -> None:
        super().__init__()
        self._pieces: list[Piece] = []
        self._starts: list[int] = []
        self._size = 0
        self._position = 0

    def add(self, data: bytes) -> None:
        if data:
            self._append(Piece(self._size, len(data), data=data))

    def add_external(self, length: int, source: object) -> None:
        if length:
            self._append(Piece(self._size, length, source=source))

    def _append(self, piece: Piece) -> None:
        self._pieces.append(piece)
        self._starts.append(piece.start)
        self._size += piece.length

    def read_external(self, piece: Piece, offset: int, count: int) -> bytes:
        """``count`` bytes of an external piece from ``offset`` within it."""
        raise NotImplementedError

    @property
    def size(self) -> int:
        return self._size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._position = base + offset
        return self._position

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and self._position < self._size:
            piece = self._pieces[bisect.bisect_right(self._starts, self._position) - 1]
            offset = self._position - piece.start
            count = min(len(view) - done, piece.length - offset)
            if piece.data is not None:
                view[done : done + count] = piece.data[offset : offset + count]
            else:
                view[done : done + count] = self.read_external(piece, offset, count)
            done += count
            self._position += count
        return done
