"""The background fetch of a whole layer, in the order a model server loads it.

Files come in TOC order (writers put prioritised files first). A safetensors file is loaded
tensor by tensor in name order (``safe_open(...).keys()`` is sorted), which need not be the
order of the bytes in the file, so its segments are fetched in that order once its header is
present. Segments no file needs (tar headers before the first payload) come last: they are
needed only to check the layer's diff ID. The fetch steps aside while a reader waits on the
network.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator, Sequence

import trio

from lazy2dfs.estargz.layout import BlobLayout, RegularFile, Segment
from lazy2dfs.logfmt import get_logger
from lazy2dfs.remote.fetch import SegmentFetcher
from lazy2dfs.remote.flight import Fetch
from lazy2dfs.remote.spans import MAX_SPAN

log = get_logger(__name__)

# A safetensors header larger than this is not read for ordering (the format allows 100 MB;
# real ones are a few hundred KiB): the file is fetched in byte order instead.
MAX_HEADER = 16 * 1024 * 1024
# Groups of segments of one layer fetched at once by its background fetch, and their size: the
# order of groups follows the load order, inside a group the blob's.
LAYER_WINDOW = 2
GROUP_BYTES = MAX_SPAN

HeaderReader = Callable[[RegularFile, int], bytes]


def tensor_order(header: bytes) -> list[tuple[int, int]] | None:
    """Byte ranges (file offsets) of a safetensors file's tensors in name order, or None if
    ``header`` (the file's start) is not a complete safetensors header."""
    if len(header) < 8:
        return None
    (length,) = struct.unpack_from("<Q", header)
    if length > MAX_HEADER or len(header) < 8 + length:
        return None
    try:
        document = json.loads(header[8 : 8 + length])
    except ValueError:
        return None
    if not isinstance(document, dict):
        return None
    ranges = []
    for name in sorted(document):
        entry = document[name]
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if name == "__metadata__" or not isinstance(offsets, list) or len(offsets) != 2:
            continue
        begin, end = offsets
        if isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end:
            ranges.append((8 + length + begin, end - begin))
    return ranges


def header_length(first_bytes: bytes) -> int | None:
    """How many bytes a safetensors file's header takes, from its first 8 bytes."""
    if len(first_bytes) < 8:
        return None
    (length,) = struct.unpack_from("<Q", first_bytes)
    return 8 + length if length <= MAX_HEADER else None


def file_order(
    layout: BlobLayout, file: RegularFile, ranges: Sequence[tuple[int, int]]
) -> list[Segment]:
    """``file``'s segments in the order ``ranges`` touch them, then any it has left."""
    ordered: dict[int, Segment] = {}
    for offset, length in ranges:
        if length:
            for chunk in layout.toc.chunks_for(file.path, offset, length):
                segment = layout.segment_of(chunk)
                ordered.setdefault(segment.index, segment)
    for chunk in file.chunks:
        segment = layout.segment_of(chunk)
        ordered.setdefault(segment.index, segment)
    return list(ordered.values())


def groups(segments: Sequence[Segment], budget: int) -> Iterator[list[Segment]]:
    """Consecutive runs of ``segments`` of at most ``budget`` compressed bytes (at least one)."""
    group: list[Segment] = []
    size = 0
    for segment in segments:
        if group and size + segment.compressed_size > budget:
            yield group
            group, size = [], 0
        group.append(segment)
        size += segment.compressed_size
    if group:
        yield group


async def fetch_layer(fetcher: SegmentFetcher) -> None:
    """Fetches every segment of the layer that is not complete in its cache."""
    layout = fetcher.layout
    seen: set[int] = set()
    for file in layout.files.values():
        segments = await _segments_of(fetcher, file)
        await _fetch_in_groups(fetcher, [s for s in segments if s.index not in seen])
        seen.update(s.index for s in segments)
    await _fetch_in_groups(fetcher, [s for s in layout.segments if s.index not in seen])


async def _segments_of(fetcher: SegmentFetcher, file: RegularFile) -> list[Segment]:
    layout = fetcher.layout
    byte_order = [layout.segment_of(c) for c in file.chunks]
    if not file.path.endswith(".safetensors") or file.size < 8:
        return list({s.index: s for s in byte_order}.values())
    try:
        first = await _read(fetcher, file, 0, 8)
        length = header_length(first)
        if length is None or length > file.size:
            return byte_order
        ranges = tensor_order(await _read(fetcher, file, 0, length))
    except Exception as exc:  # ordering is an optimisation: any failure means byte order
        log.debug("safetensors order unknown", layer=fetcher.name, file=file.path, error=repr(exc))
        return byte_order
    return byte_order if ranges is None else file_order(layout, file, ranges)


async def _read(fetcher: SegmentFetcher, file: RegularFile, offset: int, size: int) -> bytes:
    chunks = fetcher.layout.toc.chunks_for(file.path, offset, size)
    await fetcher.context.gate.wait_idle()
    await fetcher.ensure(fetcher.layout.segments_for(chunks), Fetch.PREFETCH)
    return await trio.to_thread.run_sync(fetcher.cache.read, file.path, offset, size)


async def _fetch_in_groups(fetcher: SegmentFetcher, segments: list[Segment]) -> None:
    """Readers first, but not readers only: while a reader waits on the network, no further
    group starts, yet one stays in flight. A model loads front to back, in the order this
    fetch goes, so its reader is nearly always waiting, and for what that group brings; a
    fetch that stopped whenever a reader waited left the load to its own 16 MiB read-ahead
    (measured: 89 MiB/s for a cold 1 GiB layer)."""
    context = fetcher.context
    window = trio.CapacityLimiter(LAYER_WINDOW)

    async def one(group: list[Segment], token: object) -> None:
        try:
            async with context.background_limiter:
                await fetcher.ensure(group, Fetch.PREFETCH)
        finally:
            window.release_on_behalf_of(token)

    async with trio.open_nursery() as nursery:
        for group in groups(fetcher.wanted(segments, Fetch.PREFETCH), GROUP_BYTES):
            if window.borrowed_tokens:
                await context.gate.wait_idle()
            token = object()
            await window.acquire_on_behalf_of(token)
            nursery.start_soon(one, group, token)
