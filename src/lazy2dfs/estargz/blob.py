"""Open a whole blob (eStargz, legacy stargz or zstd:chunked) through a range-reading callable.

The steps (read the tail, find the footer, read the TOC) are written once as a generator that
yields ``(offset, length)`` requests and receives the bytes, so the synchronous and the async
entry points share one implementation and neither knows about HTTP.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator

from lazy2dfs.estargz.errors import FooterError, FormatError, TocTooLargeError
from lazy2dfs.estargz.footer import LEGACY_FOOTER_SIZE, parse_footer
from lazy2dfs.estargz.reader import parse_toc
from lazy2dfs.estargz.toc import DEFAULT_LIMITS, Toc, TocLimits
from lazy2dfs.estargz.zstdchunked import (
    ZSTD_FOOTER_SIZE,
    ZSTD_FOOTER_SIZE_CONTAINERS,
    is_zstd_chunked,
    parse_zstd_footer,
    parse_zstd_toc,
)

ReadRange = Callable[[int, int], bytes]
AsyncReadRange = Callable[[int, int], Awaitable[bytes]]

_TAIL_SIZE = ZSTD_FOOTER_SIZE_CONTAINERS  # large enough for every footer we know
# gzip's worst case expansion of incompressible data is tiny; this bounds the TOC fetch.
_TOC_MEMBER_SLACK = 1 << 20

_Steps = Generator[tuple[int, int], bytes, Toc]


def open_blob(
    read_range: ReadRange,
    blob_size: int,
    *,
    expected_toc_digest: str | None = None,
    limits: TocLimits = DEFAULT_LIMITS,
) -> Toc:
    """Read and validate the TOC of a blob of ``blob_size`` bytes; two range reads."""
    steps = _open_steps(blob_size, expected_toc_digest, limits)
    request = next(steps)
    while True:
        try:
            request = steps.send(_checked(read_range(*request), request))
        except StopIteration as done:
            toc: Toc = done.value
            return toc


Step = tuple[tuple[int, int] | None, Toc | None]
# Runs a blocking function off the event loop (trio.to_thread.run_sync, say).
Offload = Callable[[Callable[[], Step]], Awaitable[Step]]


async def open_blob_async(
    read_range: AsyncReadRange,
    blob_size: int,
    *,
    expected_toc_digest: str | None = None,
    limits: TocLimits = DEFAULT_LIMITS,
    offload: Offload | None = None,
) -> Toc:
    """:func:`open_blob` for an async ``read_range`` (trio, asyncio: any event loop).
    ``offload`` runs the parsing steps elsewhere: a TOC of 200,000 entries takes seconds of
    CPU, which must not stall the event loop's other work."""
    steps = _open_steps(blob_size, expected_toc_digest, limits)
    request: tuple[int, int] | None = next(steps)
    while request is not None:
        data = _checked(await read_range(*request), request)

        def step(data: bytes = data) -> Step:
            try:
                return steps.send(data), None
            except StopIteration as done:  # returned, not raised: it must not cross threads
                return None, done.value

        request, toc = await offload(step) if offload is not None else step()
        if toc is not None:
            return toc
    raise AssertionError("the steps end with a TOC")


def _checked(data: bytes, request: tuple[int, int]) -> bytes:
    if len(data) != request[1]:
        raise FormatError(f"read of {request[1]} bytes at {request[0]} returned {len(data)}")
    return data


def _outside_tail(
    offset: int, size: int, tail: bytes, tail_start: int
) -> Generator[tuple[int, int], bytes, bytes]:
    """Bytes ``offset`` to ``offset + size`` of the blob, asking only for those not in the
    ``tail`` read first: a footer read is larger than some footers, so the tail holds the
    TOC's last bytes, which a registry should not be asked for twice."""
    head_size = max(0, min(size, tail_start - offset))
    head = (yield (offset, head_size)) if head_size else b""
    end = offset + size - tail_start
    return head + (tail[max(0, offset - tail_start) : end] if end > 0 else b"")


def _open_steps(blob_size: int, expected_digest: str | None, limits: TocLimits) -> _Steps:
    if blob_size < min(LEGACY_FOOTER_SIZE, ZSTD_FOOTER_SIZE):
        raise FooterError(f"blob of {blob_size} bytes is smaller than any footer")
    tail_size = min(blob_size, _TAIL_SIZE)
    tail = yield (blob_size - tail_size, tail_size)
    if is_zstd_chunked(tail):
        zstd_footer = parse_zstd_footer(tail)
        toc_end = zstd_footer.toc_offset + zstd_footer.toc_compressed_size
        if toc_end > blob_size - zstd_footer.size:
            raise FooterError(f"TOC ends at {toc_end}, past the footer of a {blob_size}-byte blob")
        if zstd_footer.toc_compressed_size > limits.max_toc_bytes + _TOC_MEMBER_SLACK:
            raise TocTooLargeError(f"compressed TOC is {zstd_footer.toc_compressed_size} bytes")
        # From the TOC's skippable-frame header on: with the tail, every byte after the
        # payloads is then at hand (a layer's diff ID check decodes them).
        start = zstd_footer.payload_end
        framed = yield from _outside_tail(
            start,
            zstd_footer.toc_offset - start + zstd_footer.toc_compressed_size,
            tail,
            blob_size - tail_size,
        )
        return parse_zstd_toc(
            framed[zstd_footer.toc_offset - start :],
            footer=zstd_footer,
            expected_digest=expected_digest,
            limits=limits,
        )
    footer = parse_footer(tail)
    toc_size = blob_size - footer.size - footer.toc_offset
    if toc_size <= 0:
        raise FooterError(f"TOC offset {footer.toc_offset} is past the end of the data")
    if toc_size > limits.max_toc_bytes + _TOC_MEMBER_SLACK:
        raise TocTooLargeError(f"TOC member is {toc_size} bytes")
    member = yield from _outside_tail(footer.toc_offset, toc_size, tail, blob_size - tail_size)
    return parse_toc(
        member, toc_offset=footer.toc_offset, expected_digest=expected_digest, limits=limits
    )
