"""The background fetch follows the order a model server loads: safetensors tensors by name."""

import json
import os
import struct
from collections.abc import Sequence
from pathlib import Path

import pytest
import trio

from lazy2dfs.cache.store import CacheStore
from lazy2dfs.estargz import WriterOptions
from lazy2dfs.estargz.layout import BlobLayout
from lazy2dfs.remote import prefetch
from lazy2dfs.remote.fetch import FetchContext, LayerStats, SegmentFetcher
from lazy2dfs.remote.prefetch import fetch_layer, tensor_order
from tests.support.estargz import make_tar, open_bytes, write

CHUNK = 64 * 1024


def safetensors(tensors: Sequence[tuple[str, bytes]]) -> bytes:
    """A safetensors file whose tensors lie in the order given (not name order)."""
    header: dict[str, object] = {}
    offset = 0
    for name, data in tensors:
        header[name] = {
            "dtype": "U8",
            "shape": [len(data)],
            "data_offsets": [offset, offset + len(data)],
        }
        offset += len(data)
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + b"".join(data for _, data in tensors)


class RecordingSource:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.requests: list[tuple[int, int]] = []

    def index_of(self, offset: int) -> int:
        """Which request brought the byte at ``offset``."""
        return next(i for i, (o, n) in enumerate(self.requests) if o <= offset < o + n)

    async def read_range(self, offset: int, length: int) -> bytes:
        self.requests.append((offset, length))
        return self.data[offset : offset + length]

    async def read_ranges(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        return [await self.read_range(offset, length) for offset, length in ranges]

    def release(self) -> None:
        pass


def test_tensor_order_is_name_order_with_file_offsets() -> None:
    data = safetensors([("b", b"22"), ("a", b"1")])
    (length,) = struct.unpack_from("<Q", data)
    assert tensor_order(data) == [(8 + length + 2, 1), (8 + length, 2)]
    assert tensor_order(b"\x00" * 4) is None
    assert tensor_order(struct.pack("<Q", 10) + b"not json!!") is None


def test_a_layer_is_fetched_tensor_by_tensor_in_name_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prefetch, "GROUP_BYTES", 2 * CHUNK)
    # Stored z-first; a loader asks for a, then z: a's chunks must come before z's.
    z, a = os.urandom(6 * CHUNK), os.urandom(6 * CHUNK)
    model = safetensors([("z.weight", z), ("a.weight", a)])
    data, result = write(make_tar({"m/model.safetensors": model}), WriterOptions(chunk_size=CHUNK))
    layout = BlobLayout(open_bytes(data, result.toc_digest))

    async def main() -> RecordingSource:
        context = FetchContext(CacheStore(tmp_path, 1 << 30), deadline=10)
        context.background_limiter.total_tokens = 1  # one request at a time: a clear order
        source = RecordingSource(data)
        cache = context.store.open("sha256:" + "1" * 64, layout)
        fetcher = SegmentFetcher(context, "l", "i", source, cache, LayerStats(len(data)))
        await fetch_layer(fetcher)
        assert cache.complete
        return source

    source = trio.run(main)
    header_end = 8 + struct.unpack_from("<Q", model)[0]
    z_end = header_end + len(z)
    chunks = layout.files["m/model.safetensors"].chunks
    a_chunks = [source.index_of(c.compressed_offset) for c in chunks if c.file_offset >= z_end]
    z_chunks = [
        source.index_of(c.compressed_offset)
        for c in chunks
        if c.file_offset >= header_end and c.file_offset + c.size <= z_end
    ]
    assert max(a_chunks) < min(z_chunks)
