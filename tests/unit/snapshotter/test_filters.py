import pytest

from lazy2dfs.errors import InvalidArgumentError
from lazy2dfs.snapshotter import filters
from lazy2dfs.snapshotter.snapshot import Info, Kind

REF = "containerd.io/snapshot.ref"


def info(name: str = "n", parent: str = "", kind: Kind = Kind.COMMITTED, **labels: str) -> Info:
    return Info(name, parent, kind, 0, 0, dict(labels))


def test_empty_filter_list_and_empty_string_match_everything() -> None:
    assert filters.parse([]).matches(info())
    assert filters.parse(["name==x", ""]).matches(info(name="y"))


def test_containerd_remote_snapshot_filter() -> None:
    f = filters.parse([f'labels."{REF}"==sha256:abc,parent==sha256:def'])
    hit = Info("sha256:abc", "sha256:def", Kind.COMMITTED, 0, 0, {REF: "sha256:abc"})
    assert f.matches(hit)
    assert not f.matches(Info("x", "sha256:other", Kind.COMMITTED, 0, 0, {REF: "sha256:abc"}))
    assert not f.matches(Info("x", "sha256:def", Kind.COMMITTED, 0, 0, {}))


def test_several_filters_are_or_commas_are_and() -> None:
    f = filters.parse(["name==a", "name==b,kind==active"])
    assert f.matches(info(name="a"))
    assert f.matches(info(name="b", kind=Kind.ACTIVE))
    assert not f.matches(info(name="b", kind=Kind.COMMITTED))


def test_not_equal_presence_and_regex() -> None:
    assert filters.parse(["kind!=committed"]).matches(info(kind=Kind.VIEW))
    assert filters.parse(["labels.gc!=x"]).matches(info())
    assert filters.parse(["labels.gc"]).matches(info(gc=""))
    assert not filters.parse(["labels.gc"]).matches(info())
    assert filters.parse([r"name~=^k8s\.io/[0-9]+/"]).matches(info(name="k8s.io/12/extract 1"))
    assert filters.parse(['name=="a,b"']).matches(info(name="a,b"))


def test_dotted_label_keys_join_unquoted_parts() -> None:
    assert filters.parse(["labels.a.b==1"]).matches(Info("n", "", Kind.VIEW, 0, 0, {"a.b": "1"}))


@pytest.mark.parametrize("text", ["==x", "name==", 'name=="open', "name==a b", "name~=(", "a,,b"])
def test_malformed_filters_are_invalid_arguments(text: str) -> None:
    with pytest.raises(InvalidArgumentError, match="invalid filter"):
        filters.parse([text])
