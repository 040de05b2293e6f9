import pytest
from hypothesis import given
from hypothesis import strategies as st

from lazy2dfs.registry_client import InvalidReferenceError, Partition, Reference, parse_reference

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("busybox", Reference("docker.io", "library/busybox", "latest")),
        ("docker.io/busybox:1.36", Reference("docker.io", "library/busybox", "1.36")),
        ("index.docker.io/foo/bar", Reference("docker.io", "foo/bar", "latest")),
        ("user/repo:v1", Reference("docker.io", "user/repo", "v1")),
        ("localhost/m", Reference("localhost", "m", "latest")),
        ("localhost:5000/a/b:t", Reference("localhost:5000", "a/b", "t")),
        ("127.0.0.1:5000/m:v1", Reference("127.0.0.1:5000", "m", "v1")),
        ("[::1]:5000/m", Reference("[::1]:5000", "m", "latest")),
        ("ghcr.io/o/r@" + DIGEST, Reference("ghcr.io", "o/r", None, DIGEST)),
        ("ghcr.io/o/r:t@" + DIGEST, Reference("ghcr.io", "o/r", "t", DIGEST)),
        ("a.b/c__d-e.f/g--h:v1--rc", Reference("a.b", "c__d-e.f/g--h", "v1--rc")),
    ],
)
def test_normalises_like_containerd(text: str, expected: Reference) -> None:
    assert parse_reference(text) == expected


def test_canonical_string() -> None:
    assert str(parse_reference("busybox")) == "docker.io/library/busybox:latest"
    ref = parse_reference("r.io:443/m:v1--0.0.1.2--3.0.3.9@" + DIGEST)
    assert str(ref) == "r.io:443/m:v1--0.0.1.2--3.0.3.9@" + DIGEST
    assert ref.object == DIGEST
    assert ref.name == "r.io:443/m"


def test_partitions_are_kept_apart_from_the_tag() -> None:
    ref = parse_reference("localhost:5000/model:v1--0.0.0.0--2.0.3.0")
    assert ref.tag == "v1"
    assert ref.object == "v1"
    assert ref.partitions == (Partition(0, 0, 0, 0), Partition(2, 0, 3, 0))
    assert Partition(2, 0, 3, 0).contains(3, 0)
    assert not Partition(2, 0, 3, 0).contains(1, 0)


def test_partition_with_digest() -> None:
    ref = parse_reference("m:v1--1.1.2.2@" + DIGEST)
    assert (ref.tag, ref.digest, ref.partitions) == ("v1", DIGEST, (Partition(1, 1, 2, 2),))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("m:v1--1.2.3", "x1.y1.x2.y2"),
        ("m:v1--1.-2.3.4", "x1.y1.x2.y2"),
        ("m:v1---1.0.0.0", "x1.y1.x2.y2"),
        ("m:v1--2.0.1.0", "x1 <= x2"),
        ("m:v1--0.3.1.2", "y1 <= y2"),
        ("m:v1--0.0.0.0--1.2", "x1.y1.x2.y2"),
        ("docker.io/Upper/case", "lowercase"),
        ("host:5000/Repo", "lowercase"),
        ("m:-tag", "tag"),
        ("m@sha256:abc", "digest"),
        ("m@md5:" + "0" * 32, "digest"),
        ("", "empty"),
        (" m", "whitespace"),
        ("a//b", "component"),
        ("bad_host:5000/m", "registry"),
    ],
)
def test_clear_errors(text: str, message: str) -> None:
    with pytest.raises(InvalidReferenceError, match=message):
        parse_reference(text)


def test_name_length_limit() -> None:
    with pytest.raises(InvalidReferenceError, match="longer"):
        parse_reference("r.io/" + "a" * 300)


def test_plain_tag_with_dashes_is_not_a_partition() -> None:
    ref = parse_reference("m:build--20240101")
    assert (ref.tag, ref.partitions) == ("build--20240101", ())


# -- property tests --------------------------------------------------------------------------

_component = st.from_regex(r"\A[a-z0-9]{1,5}(?:(?:[._]|__|-{1,2})[a-z0-9]{1,5}){0,2}\Z")
_registry = st.sampled_from(["docker.io", "r.io", "localhost:5000", "10.0.0.1:80", "a-b.c.d"])
_tag = st.from_regex(r"\A\w[\w.]{0,10}(?:-[\w]{1,3})?\Z", alphabet=st.characters(max_codepoint=127))
_partition = st.tuples(*[st.integers(0, 50)] * 4).map(
    lambda t: Partition(min(t[0], t[2]), min(t[1], t[3]), max(t[0], t[2]), max(t[1], t[3]))
)
_digest = st.from_regex(r"\Asha256:[0-9a-f]{64}\Z")


@st.composite
def references(draw: st.DrawFn) -> Reference:
    registry = draw(_registry)
    path = draw(st.lists(_component, min_size=1, max_size=3))
    if registry == "docker.io" and len(path) == 1:
        path = ["library", *path]
    digest = draw(st.none() | _digest)
    tag = draw(st.none() | _tag) if digest else draw(_tag)
    partitions = tuple(draw(st.lists(_partition, max_size=3))) if tag else ()
    return Reference(registry, "/".join(path), tag, digest, partitions)


@given(references())
def test_round_trip(ref: Reference) -> None:
    assert parse_reference(str(ref)) == ref


@given(st.text(max_size=60))
def test_never_fails_with_anything_but_invalid_reference(text: str) -> None:
    try:
        ref = parse_reference(text)
    except InvalidReferenceError:
        return
    assert parse_reference(str(ref)) == ref


def test_uppercase_first_component_is_a_host_as_in_docker() -> None:
    assert parse_reference("Upper/case") == Reference("Upper", "case", "latest")
