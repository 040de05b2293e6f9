"""Test doubles that keep bytes in memory: a registry blob and its locator for the read path,
and a file reader for the FUSE layer."""

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import trio

from lazy2dfs.estargz import WriterOptions, write_blob_from_directory
from lazy2dfs.layers.locator import Located


@dataclass
class MemoryBlob:
    """A registry blob that counts the bytes it served; ``corrupt_at`` flips one payload
    byte, ``stalled`` makes every read wait forever (a registry that stopped answering)."""

    data: bytes
    served: int = 0
    requests: list[tuple[int, int]] = field(default_factory=list)
    corrupt_at: int | None = None
    stalled: bool = False
    released: bool = False  # the read path said it needs no more of the blob

    async def read_range(self, offset: int, length: int) -> bytes:
        if self.stalled:
            await trio.sleep_forever()
        self.requests.append((offset, length))
        self.served += length
        piece = bytearray(self.data[offset : offset + length])
        if self.corrupt_at is not None and offset <= self.corrupt_at < offset + length:
            piece[self.corrupt_at - offset] ^= 0xFF
        return bytes(piece)

    async def read_ranges(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        return [await self.read_range(offset, length) for offset, length in ranges]

    def release(self) -> None:
        self.released = True


@dataclass
class MemoryLocator:
    """Locates every layer request at ``blob``, with the diff ID its config would give;
    counts the lookups."""

    blob: MemoryBlob
    toc_digest: str
    diff_id: str = ""
    located: int = 0

    async def locate(self, request: object) -> Located:
        self.located += 1
        return Located(self.toc_digest, len(self.blob.data), self.diff_id)

    def source(self, request: object, size: int) -> MemoryBlob:
        return self.blob

    @classmethod
    def of_files(cls, files: Mapping[str, bytes], workdir: Path, options: WriterOptions) -> Self:
        """An eStargz blob of ``files`` (path in the layer → bytes, written under ``workdir``
        first), with its TOC digest and diff ID."""
        src = workdir / "src"
        for name, data in files.items():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_bytes(data)
        out = io.BytesIO()
        result = write_blob_from_directory(src, out, options)
        return cls(MemoryBlob(out.getvalue()), result.toc_digest, result.diff_id)


class MemoryReader:
    """Serves the bytes ``files`` holds under each file's key (its path)."""

    def __init__(self, files: Mapping[str, bytes]) -> None:
        self._files = files

    async def read(self, key: str, offset: int, size: int, into: bytearray | None = None) -> bytes:
        return self._files[key][offset : offset + size]
