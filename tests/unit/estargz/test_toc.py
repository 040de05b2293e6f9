"""TOC validation: every malformed or hostile TOC becomes a typed error, never a crash."""

from __future__ import annotations

import contextlib
import hashlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lazy2dfs.errors import InvalidArgumentError, NotFoundError
from lazy2dfs.estargz import (
    Compression,
    EntryType,
    FormatError,
    TocDigestMismatchError,
    TocError,
    TocLimits,
    TocTooLargeError,
    UnsafePathError,
    parse_toc,
)
from lazy2dfs.estargz.toc import Toc, build_toc
from tests.support.estargz import toc_member

PAYLOAD_END = 1000
LIMITS = TocLimits()


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def reg(name: str, size: int, offset: int, **more: Any) -> dict[str, Any]:
    return {
        "name": name,
        "type": "reg",
        "size": size,
        "offset": offset,
        "digest": digest(b"x" * size),
        "chunkDigest": digest(b"x" * size),
        **more,
    }


def build(entries: list[dict[str, Any]], **kwargs: Any) -> Toc:
    doc = json.dumps({"version": 1, "entries": entries}).encode()
    return build_toc(
        doc,
        payload_end=kwargs.get("payload_end", PAYLOAD_END),
        compression=Compression.GZIP,
        limits=kwargs.get("limits", LIMITS),
    )


def three_chunks() -> list[dict[str, Any]]:
    return [
        {
            "name": "f",
            "type": "reg",
            "size": 10,
            "offset": 100,
            "chunkSize": 4,
            "digest": digest(b"x" * 10),
            "chunkDigest": digest(b"a"),
        },
        {
            "type": "chunk",
            "offset": 200,
            "chunkOffset": 4,
            "chunkSize": 4,
            "chunkDigest": digest(b"b"),
        },
        {
            "name": "f",
            "type": "chunk",
            "offset": 300,
            "chunkOffset": 8,
            "chunkDigest": digest(b"c"),
        },
    ]


def test_every_spec_key_is_parsed() -> None:
    entry = {
        "name": "./dev/x",
        "type": "char",
        "modtime": "2000-01-01T00:00:00Z",
        "mode": 0o600,
        "uid": 5,
        "gid": 6,
        "userName": "u",
        "groupName": "g",
        "devMajor": 1,
        "devMinor": 3,
        "xattrs": {"user.k": "dmFsdWU="},
    }
    toc = build([entry, {"name": "l", "type": "symlink", "linkName": "/abs/target"}])
    parsed = toc.resolve("dev/x")
    assert parsed.type is EntryType.CHAR
    assert (parsed.mode, parsed.uid, parsed.gid, parsed.user_name, parsed.group_name) == (
        0o600,
        5,
        6,
        "u",
        "g",
    )
    assert (parsed.dev_major, parsed.dev_minor) == (1, 3)
    assert parsed.xattrs == {"user.k": b"value"}
    assert parsed.modtime is not None and parsed.modtime.year == 2000
    assert toc.resolve("/l").link_name == "/abs/target"  # symlink targets are kept verbatim


def test_entry_json_round_trips_omitting_zero_values() -> None:
    toc = build([reg("a", 3, 10, uid=0, gid=7, xattrs={"k": "AAE="})])
    out = toc.resolve("a").to_json()
    assert "uid" not in out and out["gid"] == 7 and out["xattrs"] == {"k": "AAE="}
    assert build([out]).resolve("a") == toc.resolve("a")


def test_names_are_normalised_and_parents_implied() -> None:
    toc = build([reg("./a//b/c", 3, 10)])
    assert toc.get("a/b/c") is not None
    implied = toc.resolve("a/b")
    assert implied.type is EntryType.DIR and implied.mode == 0o755
    assert toc.children("") == ("a",) and toc.children("/a/") == ("b",)


def test_root_entry_from_dot_slash_is_the_root_directory() -> None:
    toc = build([{"name": "./", "type": "dir", "mode": 0o700}])
    assert toc.resolve("").mode == 0o700


@pytest.mark.parametrize("name", ["../etc/passwd", "a/../../b", "/etc/passwd", "a/\x00b", "a/.."])
def test_escaping_names_are_rejected(name: str) -> None:
    with pytest.raises(UnsafePathError):
        build([reg(name, 3, 10)])


def test_hardlink_resolves_to_its_target_and_its_chunks() -> None:
    toc = build(
        [
            reg("a", 3, 10),
            {"name": "h1", "type": "hardlink", "linkName": "a"},
            {"name": "h2", "type": "hardlink", "linkName": "./h1"},
        ]
    )
    assert toc.resolve("h2").name == "a"
    assert toc.chunks_for("h2") == toc.chunks_for("a")


@pytest.mark.parametrize(
    ("entries", "why"),
    [
        ([{"name": "h", "type": "hardlink", "linkName": "missing"}], "missing"),
        (
            [
                {"name": "h", "type": "hardlink", "linkName": "g"},
                {"name": "g", "type": "hardlink", "linkName": "h"},
            ],
            "cycle",
        ),
        (
            [{"name": "d", "type": "dir"}, {"name": "h", "type": "hardlink", "linkName": "d"}],
            "directory",
        ),
        ([{"name": "h", "type": "hardlink", "linkName": "../x"}], "'..'"),
    ],
)
def test_bad_hardlinks_are_rejected(entries: list[dict[str, Any]], why: str) -> None:
    with pytest.raises(TocError, match=why):
        build(entries)


def test_chunk_map_of_a_three_chunk_file() -> None:
    toc = build(three_chunks())
    chunks = toc.chunks_for("f")
    assert [(c.file_offset, c.size) for c in chunks] == [(0, 4), (4, 4), (8, 2)]
    assert [(c.compressed_offset, c.compressed_end) for c in chunks] == [
        (100, 200),
        (200, 300),
        (300, PAYLOAD_END),
    ]
    assert [c.digest for c in chunks] == [digest(b"a"), digest(b"b"), digest(b"c")]
    assert [c.file_offset for c in toc.chunks_for("f", 3, 2)] == [0, 4]
    assert [c.file_offset for c in toc.chunks_for("f", 4, 4)] == [4]
    assert [c.file_offset for c in toc.chunks_for("f", 9, 100)] == [8]
    assert toc.chunks_for("f", 10) == [] and toc.chunks_for("f", 5, 0) == []


def test_chunks_for_rejects_bad_requests() -> None:
    toc = build([*three_chunks(), {"name": "d", "type": "dir"}])
    with pytest.raises(NotFoundError):
        toc.chunks_for("nope")
    with pytest.raises(InvalidArgumentError):
        toc.chunks_for("d")
    with pytest.raises(InvalidArgumentError):
        toc.chunks_for("f", -1)


def test_next_member_offset_bounds_each_chunk_even_across_files() -> None:
    toc = build([reg("a", 3, 10), reg("b", 3, 50)])
    assert toc.chunks_for("a")[0].compressed_end == 50
    assert toc.chunks_for("b")[0].compressed_end == PAYLOAD_END


def test_inner_offset_entries_share_a_member() -> None:
    toc = build([reg("a", 3, 10), reg("b", 3, 10, innerOffset=512)])
    assert toc.chunks_for("b")[0].inner_offset == 512
    assert toc.chunks_for("a")[0].compressed_end == PAYLOAD_END


def test_single_chunk_file_falls_back_to_its_file_digest() -> None:
    entry = reg("a", 3, 10)
    del entry["chunkDigest"]
    assert build([entry]).chunks_for("a")[0].digest == digest(b"xxx")


def mutate(index: int, **changes: Any) -> list[dict[str, Any]]:
    entries = three_chunks()
    entries[index].update(changes)
    return [e for e in entries if e.get("type") != "drop"]


@pytest.mark.parametrize(
    ("entries", "why"),
    [
        (mutate(1, chunkOffset=3), "overlap"),
        (mutate(1, chunkOffset=5), "gap"),
        (mutate(1, type="drop"), "gap"),
        (mutate(2, chunkSize=1), "cover 9 of 10"),
        (mutate(2, chunkSize=5), "runs past"),
        (mutate(0, size=-1), "out of range"),
        (mutate(0, size=1.5), "not an integer"),
        (mutate(0, size=True), "not an integer"),
        (mutate(0, size=1 << 64), "out of range"),
        (mutate(2, offset=PAYLOAD_END), "past the data"),
        (mutate(1, chunkDigest=""), "no digest"),
        (mutate(1, chunkDigest="md5:abc"), "not a sha256"),
        (mutate(1, name="other"), "chunk of 'other' follows"),
        ([{"type": "chunk", "offset": 1}], "does not follow"),
        ([reg("a", 0, 0), {"type": "chunk", "offset": 5}], "empty file"),
        ([reg("a", 3, 10), reg("b", 3, 10)], "overlap in member"),
        ([reg("a", 3, 10), reg("./a", 3, 20)], "appears twice"),
        ([reg("a", 3, 10), reg("a/b", 3, 20)], "inside 'a'"),
        ([{"name": "x", "type": "socket"}], "unknown type"),
        ([{"name": "x", "type": "reg", "xattrs": {"k": "not base64!"}}], "not base64"),
        ([{"name": "x", "type": "reg", "xattrs": ["k"]}], "not an object"),
        ([{"name": "x", "type": "dir", "modtime": "yesterday"}], "RFC 3339"),
        ([{"name": "x", "type": "dir", "modtime": "2000-01-01T00:00:00"}], "time zone"),
        ([{"name": 5, "type": "dir"}], "not a string"),
        (["entry"], "not an object"),
        ([{"name": "", "type": "reg"}], "root entry"),
    ],
)
def test_invalid_entries_raise_toc_error(entries: list[dict[str, Any]], why: str) -> None:
    with pytest.raises(TocError, match=why):
        build(entries)


@pytest.mark.parametrize(
    ("document", "why"),
    [
        (b"not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "not JSON"),
        (b"[]", "not a JSON object"),
        (b'{"version": 2, "entries": []}', "version"),
        (b'{"version": true, "entries": []}', "version"),
        (b'{"version": 1}', "no entries"),
    ],
)
def test_invalid_documents_raise_toc_error(document: bytes, why: str) -> None:
    with pytest.raises(TocError, match=why):
        build_toc(document, payload_end=10, compression=Compression.GZIP, limits=LIMITS)


def test_size_and_entry_caps() -> None:
    entries = [{"name": f"d{i}", "type": "dir"} for i in range(10)]
    with pytest.raises(TocTooLargeError):
        build(entries, limits=TocLimits(max_entries=9))
    with pytest.raises(TocTooLargeError):
        build(entries, limits=TocLimits(max_toc_bytes=100))
    assert len(build(entries, limits=TocLimits(max_entries=10)).entries) == 10


def test_parse_toc_checks_member_and_digest() -> None:
    document = {"version": 1, "entries": [reg("a", 3, 10)]}
    member = toc_member(document)
    toc = parse_toc(member, toc_offset=PAYLOAD_END)
    assert toc.digest == digest(json.dumps(document).encode())
    assert parse_toc(member, toc_offset=PAYLOAD_END, expected_digest=toc.digest) == toc
    with pytest.raises(TocDigestMismatchError):
        parse_toc(member, toc_offset=PAYLOAD_END, expected_digest=digest(b"other"))
    with pytest.raises(TocTooLargeError):
        parse_toc(member, toc_offset=PAYLOAD_END, limits=TocLimits(max_toc_bytes=10))
    with pytest.raises(FormatError):
        parse_toc(member[: len(member) // 2], toc_offset=PAYLOAD_END)


def test_parse_toc_rejects_member_without_toc_entry() -> None:
    import gzip
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.addfile(tarfile.TarInfo("other.json"))
    with pytest.raises(TocError, match=r"not stargz\.index\.json"):
        parse_toc(gzip.compress(buf.getvalue()), toc_offset=10)
    with pytest.raises(TocError, match="less than a tar header"):
        parse_toc(gzip.compress(b"short"), toc_offset=10)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
entry_keys = st.sampled_from(
    [
        "name",
        "type",
        "size",
        "modtime",
        "linkName",
        "mode",
        "uid",
        "gid",
        "offset",
        "innerOffset",
        "xattrs",
        "digest",
        "chunkOffset",
        "chunkSize",
        "chunkDigest",
        "endOffset",
    ]
)
plausible_values = st.one_of(
    json_values,
    st.sampled_from(list(EntryType)).map(str),
    st.integers(min_value=-2, max_value=1200),
    st.sampled_from(["a", "./a", "a/b", "../a", "/a", "", digest(b"x"), "2000-01-01T00:00:00Z"]),
)
entries_strategy = st.lists(st.dictionaries(entry_keys, plausible_values, max_size=8), max_size=6)


@settings(max_examples=300, deadline=None)
@given(entries_strategy)
def test_random_entries_raise_only_toc_errors(entries: list[dict[str, Any]]) -> None:
    try:
        toc = build(entries)
    except TocError:
        return
    for chunk in toc.iter_chunks():  # whatever passes validation is internally consistent
        assert chunk.compressed_offset < chunk.compressed_end <= PAYLOAD_END
        assert chunk.size > 0 and chunk.digest.startswith("sha256:")


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_random_json_documents_raise_only_toc_errors(document: Any) -> None:
    with contextlib.suppress(TocError):
        build_toc(
            json.dumps(document).encode(),
            payload_end=10,
            compression=Compression.GZIP,
            limits=LIMITS,
        )


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2048))
def test_random_member_bytes_raise_only_format_errors(member: bytes) -> None:
    with contextlib.suppress(FormatError):
        parse_toc(member, toc_offset=10)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=2048))
def test_random_gzipped_payloads_raise_only_format_errors(plain: bytes) -> None:
    import gzip

    with contextlib.suppress(FormatError):
        parse_toc(gzip.compress(plain), toc_offset=10)
