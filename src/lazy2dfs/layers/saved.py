"""What resolving a layer read from its blob (footer and TOC), kept so that a restarted
daemon restores the same tree without the network, and so that the layer's diff ID can be
computed (its TOC region is part of the tar stream)."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from lazy2dfs.errors import IntegrityError


class RangeSource(Protocol):
    async def read_range(self, offset: int, length: int) -> bytes: ...


@dataclass
class RecordedRanges:
    """The ranges read while opening a blob, to replay them after a restart."""

    ranges: dict[int, bytes] = field(default_factory=dict)

    def recording(self, source: RangeSource) -> RangeSource:
        recorder = self

        class Recording:
            async def read_range(self, offset: int, length: int) -> bytes:
                data = await source.read_range(offset, length)
                recorder.ranges[offset] = data
                return data

        return Recording()

    async def read_range(self, offset: int, length: int) -> bytes:
        return self.read(offset, length)

    def read(self, offset: int, length: int) -> bytes:
        data = self.ranges.get(offset, b"")
        if len(data) < length:
            raise IntegrityError(f"saved TOC has no range {offset}+{length}")
        # A layer saved before the TOC read skipped the bytes the tail holds has the whole
        # member at this offset: its start is what is asked for now.
        return data[:length]

    def span(self, start: int, end: int) -> bytes:
        """Blob bytes ``start``..``end`` from the recorded ranges (which overlap at most)."""
        out = bytearray(end - start)
        covered = 0
        for offset, data in self.ranges.items():
            lo, hi = max(start, offset), min(end, offset + len(data))
            if lo < hi:
                out[lo - start : hi - start] = data[lo - offset : hi - offset]
                covered += hi - lo
        if covered < end - start:
            raise IntegrityError(f"recorded ranges do not cover {start}..{end}")
        return bytes(out)

    @property
    def fetched(self) -> int:
        return sum(len(data) for data in self.ranges.values())


@dataclass(frozen=True)
class SavedLayer:
    toc_digest: str
    size: int
    diff_id: str
    recorded: RecordedRanges


def save(directory: Path, layer: SavedLayer) -> None:
    """Writes ``layer`` to ``directory`` durably (synced before it is renamed into place), so
    a snapshot committed after this never lacks its TOC."""
    staging = directory.with_name(f".{directory.name}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(mode=0o700)
    files = {f"{offset}.bin": data for offset, data in layer.recorded.ranges.items()}
    meta = {"toc_digest": layer.toc_digest, "size": layer.size, "diff_id": layer.diff_id}
    files["meta.json"] = json.dumps(meta).encode()
    for name, data in files.items():
        fd = os.open(staging / name, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
    _sync(staging)
    shutil.rmtree(directory, ignore_errors=True)
    staging.rename(directory)
    _sync(directory.parent)


def load(directory: Path) -> SavedLayer:
    """Raises OSError, ValueError or KeyError when nothing usable is saved there."""
    meta = json.loads((directory / "meta.json").read_text())
    recorded = RecordedRanges({int(p.stem): p.read_bytes() for p in directory.glob("*.bin")})
    return SavedLayer(
        str(meta["toc_digest"]), int(meta["size"]), str(meta.get("diff_id", "")), recorded
    )


def _sync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
