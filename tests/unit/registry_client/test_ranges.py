import pytest

from lazy2dfs.registry_client import RegistryProtocolError
from lazy2dfs.registry_client.ranges import (
    Part,
    parse_content_range,
    parse_multipart_byteranges,
    range_header,
    slice_parts,
)

BLOB = bytes(range(256)) * 4


def multipart(boundary: str, spans: list[tuple[int, int]], preamble: bytes = b"") -> bytes:
    body = preamble
    for first, last in spans:
        body += (
            f"--{boundary}\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Range: bytes {first}-{last}/{len(BLOB)}\r\n\r\n"
        ).encode()
        body += BLOB[first : last + 1] + b"\r\n"
    return body + f"--{boundary}--\r\n".encode()


def test_range_header() -> None:
    assert range_header([(0, 10), (100, 1)]) == "bytes=0-9,100-100"


def test_content_range() -> None:
    assert parse_content_range("bytes 5-9/100") == (5, 9, 100)
    assert parse_content_range("bytes 5-9/*") == (5, 9, None)
    for bad in ("bytes 9-5/100", "items 1-2/3", "bytes 1-2"):
        with pytest.raises(RegistryProtocolError):
            parse_content_range(bad)


def test_multipart_with_boundary_bytes_inside_the_data() -> None:
    boundary = "3d6b6a416f9b5"
    global BLOB
    original = BLOB
    BLOB = original[:50] + b"--" + boundary.encode() + original[50 + 2 + len(boundary) :]
    try:
        body = multipart(boundary, [(40, 80), (900, 1000)], preamble=b"ignored\r\n")
        parts = parse_multipart_byteranges(body, f"multipart/byteranges; boundary={boundary}")
        assert parts == [Part(40, BLOB[40:81]), Part(900, BLOB[900:1001])]
    finally:
        BLOB = original


def test_quoted_boundary_and_slicing_merged_or_reordered_parts() -> None:
    body = multipart("b", [(500, 599), (0, 99)])
    parts = parse_multipart_byteranges(body, 'multipart/byteranges; boundary="b"')
    assert slice_parts(parts, [(10, 5), (550, 10), (0, 100)]) == [
        BLOB[10:15],
        BLOB[550:560],
        BLOB[:100],
    ]


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"no boundary here", "multipart/byteranges; boundary=x"),
        (b"--x\r\nContent-Range: bytes 0-9/10\r\n\r\nshort", "multipart/byteranges; boundary=x"),
        (b"--x\r\nContent-Type: a\r\n\r\n0123\r\n--x--", "multipart/byteranges; boundary=x"),
        (b"--x\r\nContent-Range: bytes 0-3/10", "multipart/byteranges; boundary=x"),
        (b"--x\r\nContent-Range: bytes 0-3/10\r\n\r\n0123\r\n", "multipart/byteranges; boundary=x"),
        (b"--x--", "multipart/byteranges"),
    ],
)
def test_malformed_multipart(body: bytes, content_type: str) -> None:
    with pytest.raises(RegistryProtocolError):
        parse_multipart_byteranges(body, content_type)


def test_missing_bytes_are_an_error() -> None:
    with pytest.raises(RegistryProtocolError, match="lacks"):
        slice_parts([Part(0, b"abc")], [(2, 2)])
