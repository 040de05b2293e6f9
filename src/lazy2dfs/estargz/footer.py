"""The gzip footer that ends every eStargz blob and points at its TOC.

The footer is an empty gzip member whose header carries the TOC's compressed offset in the
FEXTRA field, so the blob stays a valid tar.gz while a reader that fetches only the last 51
bytes learns where the TOC is. Old stargz blobs use a 47-byte variant whose extra field is the
bare 22-byte payload, without the ``SG`` subfield header; we read both and write only the new one.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from lazy2dfs.estargz.errors import FooterError

FOOTER_SIZE = 51
LEGACY_FOOTER_SIZE = 47

_MAGIC = b"STARGZ"
_PAYLOAD_SIZE = 16 + len(_MAGIC)  # %016x offset + magic
_SUBFIELD_ID = b"SG"
# ID1 ID2 CM=deflate FLG=FEXTRA MTIME=0 XFL=0 OS=255 (unknown): fixed, so footers are reproducible.
_GZIP_HEADER = b"\x1f\x8b\x08\x04\x00\x00\x00\x00\x00\xff"
# One final stored deflate block of length 0, then CRC32=0 and ISIZE=0 of the empty payload.
_EMPTY_DEFLATE_AND_TRAILER = b"\x01\x00\x00\xff\xff" + b"\x00" * 8


@dataclass(frozen=True, slots=True)
class Footer:
    """Where the TOC member starts, and which footer variant said so."""

    toc_offset: int
    size: int

    @property
    def legacy(self) -> bool:
        return self.size == LEGACY_FOOTER_SIZE


def build_footer(toc_offset: int) -> bytes:
    """The 51-byte footer for a blob whose TOC gzip member starts at ``toc_offset``."""
    if not 0 <= toc_offset < 1 << 63:
        raise FooterError(f"TOC offset {toc_offset} out of range")
    payload = b"%016x" % toc_offset + _MAGIC
    extra = _SUBFIELD_ID + struct.pack("<H", len(payload)) + payload
    footer = _GZIP_HEADER + struct.pack("<H", len(extra)) + extra + _EMPTY_DEFLATE_AND_TRAILER
    assert len(footer) == FOOTER_SIZE
    return footer


def parse_footer(tail: bytes) -> Footer:
    """Parse the footer from the last bytes of a blob (at least 47; 51 or more to see both kinds).

    The 51-byte variant is tried first because the last 47 bytes of a 51-byte footer are not a
    valid legacy footer (their extra length differs), so the order cannot misread a blob.
    """
    errors: list[str] = []
    for size, parse in ((FOOTER_SIZE, _parse_new), (LEGACY_FOOTER_SIZE, _parse_legacy)):
        if len(tail) < size:
            errors.append(f"{size}-byte footer: only {len(tail)} bytes given")
            continue
        try:
            return Footer(toc_offset=parse(tail[-size:]), size=size)
        except FooterError as err:
            errors.append(f"{size}-byte footer: {err}")
    raise FooterError("not an eStargz/stargz footer (" + "; ".join(errors) + ")")


def _parse_new(footer: bytes) -> int:
    extra = _gzip_extra(footer)
    if len(extra) != 4 + _PAYLOAD_SIZE or extra[:2] != _SUBFIELD_ID:
        raise FooterError("extra field is not an SG subfield")
    (sub_len,) = struct.unpack_from("<H", extra, 2)
    if sub_len != _PAYLOAD_SIZE:
        raise FooterError(f"SG subfield length {sub_len}, want {_PAYLOAD_SIZE}")
    return _parse_payload(extra[4:])


def _parse_legacy(footer: bytes) -> int:
    extra = _gzip_extra(footer)
    if len(extra) != _PAYLOAD_SIZE:
        raise FooterError(f"extra field length {len(extra)}, want {_PAYLOAD_SIZE}")
    return _parse_payload(extra)


def _gzip_extra(footer: bytes) -> bytes:
    """The FEXTRA bytes of a footer that must otherwise be an empty gzip member."""
    if footer[:3] != b"\x1f\x8b\x08":
        raise FooterError("no gzip member header")
    if footer[3] != 0x04:
        raise FooterError(f"gzip flags {footer[3]:#04x}, want only FEXTRA")
    (xlen,) = struct.unpack_from("<H", footer, 10)
    if 12 + xlen + len(_EMPTY_DEFLATE_AND_TRAILER) != len(footer):
        raise FooterError(f"extra length {xlen} does not fit the footer")
    if footer[12 + xlen :] != _EMPTY_DEFLATE_AND_TRAILER:
        raise FooterError("footer member is not empty")
    return footer[12 : 12 + xlen]


def _parse_payload(payload: bytes) -> int:
    hex_offset, magic = payload[:16], payload[16:]
    if magic != _MAGIC:
        raise FooterError("STARGZ magic missing")
    if not all(c in b"0123456789abcdefABCDEF" for c in hex_offset):
        raise FooterError(f"TOC offset {hex_offset!r} is not hexadecimal")
    offset = int(hex_offset, 16)
    if offset >= 1 << 63:
        raise FooterError(f"TOC offset {offset} out of range")
    return offset
