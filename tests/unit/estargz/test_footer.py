from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lazy2dfs.estargz import FOOTER_SIZE, LEGACY_FOOTER_SIZE, FooterError, parse_footer
from lazy2dfs.estargz.footer import build_footer
from tests.support.estargz import legacy_footer


def test_footer_is_51_bytes_with_sg_subfield_and_hex_offset() -> None:
    footer = build_footer(0x1234ABCD)
    assert len(footer) == FOOTER_SIZE
    assert footer[12:16] == b"SG\x16\x00"
    assert footer[16:38] == b"000000001234abcdSTARGZ"


@given(st.integers(min_value=0, max_value=(1 << 63) - 1), st.binary(max_size=64))
def test_footer_round_trips_after_any_prefix(offset: int, prefix: bytes) -> None:
    footer = parse_footer(prefix + build_footer(offset))
    assert (footer.toc_offset, footer.size, footer.legacy) == (offset, FOOTER_SIZE, False)


def test_legacy_footer_is_read() -> None:
    tail = b"x" * 10 + legacy_footer(777)
    footer = parse_footer(tail)
    assert (footer.toc_offset, footer.size, footer.legacy) == (777, LEGACY_FOOTER_SIZE, True)


def test_legacy_footer_alone_is_enough() -> None:
    assert parse_footer(legacy_footer(5)).toc_offset == 5


@pytest.mark.parametrize(
    ("tail", "why"),
    [
        (b"", "only 0 bytes"),
        (build_footer(1)[1:], "only"),  # truncated
        (build_footer(1).replace(b"STARGZ", b"STARGX"), "magic"),
        (build_footer(1).replace(b"0000000000000001", b"00000000000000zz"), "hexadecimal"),
        (build_footer(1).replace(b"SG", b"SX"), "SG subfield"),
        (b"\x00" * 51, "no gzip"),
        (build_footer(1)[:-1] + b"\x01", "not empty"),  # ISIZE != 0
        (build_footer(1).replace(b"0000000000000001", b"ffffffffffffffff"), "out of range"),
    ],
)
def test_bad_footers_raise_footer_error(tail: bytes, why: str) -> None:
    with pytest.raises(FooterError, match=why):
        parse_footer(tail)


def test_build_footer_rejects_negative_offset() -> None:
    with pytest.raises(FooterError):
        build_footer(-1)


@given(st.binary(max_size=120))
def test_random_tails_raise_only_footer_error(tail: bytes) -> None:
    with contextlib.suppress(FooterError):
        parse_footer(tail)


@given(st.integers(min_value=0, max_value=50), st.integers(min_value=0, max_value=255))
def test_any_single_byte_change_is_detected_or_harmless(position: int, value: int) -> None:
    """Changing one byte either leaves a footer that parses or raises FooterError, never worse."""
    footer = bytearray(build_footer(42))
    footer[position] = value
    try:
        parsed = parse_footer(bytes(footer))
    except FooterError:
        return
    # The only tolerated changes are MTIME/XFL/OS header bytes or hex-case changes of the offset.
    assert position in range(4, 10) or parsed.toc_offset == 42 or 16 <= position < 32
