"""Gzip members as segments hold them: one member (the fast path), several, or a hostile one."""

import gzip
import os

import pytest

from lazy2dfs.estargz import CompressedDataError
from lazy2dfs.estargz.members import inflate_gzip_segment

PAYLOAD = os.urandom(100_000) + b"\0" * 50_000


def test_one_member_inflates_to_its_bytes() -> None:
    assert inflate_gzip_segment(gzip.compress(PAYLOAD), len(PAYLOAD)) == PAYLOAD


def test_every_member_of_a_segment_is_inflated_not_only_the_first() -> None:
    tail = b"headers of the entries that follow" * 10
    joined = gzip.compress(PAYLOAD) + gzip.compress(tail)
    assert inflate_gzip_segment(memoryview(joined), 1 << 20) == PAYLOAD + tail


def test_bytes_after_a_member_that_are_no_member_are_refused() -> None:
    with pytest.raises(CompressedDataError):
        inflate_gzip_segment(gzip.compress(PAYLOAD) + b"not a gzip member", 1 << 20)


def test_a_member_inflating_past_the_limit_is_refused() -> None:
    with pytest.raises(CompressedDataError, match="more than"):
        inflate_gzip_segment(gzip.compress(PAYLOAD), len(PAYLOAD) - 1)


def test_a_member_whose_trailer_lies_about_its_length_is_refused() -> None:
    member = bytearray(gzip.compress(PAYLOAD))
    member[-4:] = (len(PAYLOAD) - 1).to_bytes(4, "little")
    with pytest.raises(CompressedDataError):
        inflate_gzip_segment(bytes(member), 1 << 20)
