"""HTTP byte ranges: the ``Range`` header, ``Content-Range`` and ``multipart/byteranges``.

Pure functions over bytes and header values, so that the odd answers registries give can be
tested without a network. Ranges are ``(offset, length)`` pairs throughout; HTTP's inclusive
``first-last`` form appears only at the wire.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from lazy2dfs.registry_client.errors import RegistryProtocolError

ByteRange = tuple[int, int]  # (offset, length)

_CONTENT_RANGE = re.compile(r"^bytes\s+(\d+)-(\d+)/(\d+|\*)$")
_BOUNDARY = re.compile(r'boundary=(?:"([^"]+)"|([^;,\s]+))', re.IGNORECASE)


@dataclass(frozen=True)
class Part:
    """Bytes ``offset .. offset+len(data)`` of the blob, as a response delivered them."""

    offset: int
    data: bytes

    @property
    def end(self) -> int:
        return self.offset + len(self.data)


def range_header(ranges: Sequence[ByteRange]) -> str:
    return "bytes=" + ",".join(f"{offset}-{offset + length - 1}" for offset, length in ranges)


def parse_content_range(value: str) -> tuple[int, int, int | None]:
    """``(first, last, total)`` of ``bytes first-last/total``; ``total`` is None for ``*``."""
    match = _CONTENT_RANGE.match(value.strip())
    if match is None:
        raise RegistryProtocolError(f"malformed Content-Range {value!r}")
    first, last = int(match.group(1)), int(match.group(2))
    if last < first:
        raise RegistryProtocolError(f"Content-Range {value!r} ends before it starts")
    total = None if match.group(3) == "*" else int(match.group(3))
    return first, last, total


def parse_multipart_byteranges(body: bytes, content_type: str) -> list[Part]:
    """The parts of a ``multipart/byteranges`` body.

    Each part's length comes from its ``Content-Range``, not from searching for the boundary,
    because blob bytes may contain anything, the boundary included.
    """
    match = _BOUNDARY.search(content_type)
    if match is None:
        raise RegistryProtocolError(f"multipart answer without boundary: {content_type!r}")
    delimiter = b"--" + (match.group(1) or match.group(2)).encode("latin-1")
    position = body.find(delimiter)
    if position < 0:
        raise RegistryProtocolError("multipart body has no boundary")
    parts: list[Part] = []
    while True:
        position += len(delimiter)
        if body.startswith(b"--", position):
            return parts
        header_end = body.find(b"\r\n\r\n", position)
        if header_end < 0:
            raise RegistryProtocolError("multipart part without end of headers")
        headers = _part_headers(body[position:header_end])
        if "content-range" not in headers:
            raise RegistryProtocolError("multipart part without Content-Range")
        first, last, _ = parse_content_range(headers["content-range"])
        start = header_end + 4
        stop = start + last - first + 1
        if stop > len(body):
            raise RegistryProtocolError("multipart part shorter than its Content-Range")
        parts.append(Part(first, body[start:stop]))
        position = body.find(delimiter, stop)
        if position < 0:
            raise RegistryProtocolError("multipart body ends without closing boundary")


def _part_headers(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in block.decode("latin-1").split("\r\n"):
        name, colon, value = line.partition(":")
        if colon:
            headers[name.strip().lower()] = value.strip()
    return headers


def slice_parts(parts: Sequence[Part], wanted: Sequence[ByteRange]) -> list[bytes]:
    """Each wanted range cut out of whichever part covers it.

    Servers may merge neighbouring ranges into one part or reorder parts; both are fine as
    long as every wanted byte is there.
    """
    result: list[bytes] = []
    for offset, length in wanted:
        for part in parts:
            if part.offset <= offset and offset + length <= part.end:
                start = offset - part.offset
                result.append(part.data[start : start + length])
                break
        else:
            raise RegistryProtocolError(f"answer lacks bytes {offset}+{length}")
    return result
