import json
from pathlib import Path

import pytest

from lazy2dfs.tdfs import BuildSpecError, FileCopy, load_spec, parse_spec
from lazy2dfs.tdfs.spec import dump_spec


@pytest.fixture
def sources(tmp_path: Path) -> Path:
    (tmp_path / "a.bin").write_bytes(b"a")
    (tmp_path / "b.bin").write_bytes(b"b")
    (tmp_path / "sub").mkdir()
    return tmp_path


def test_upstream_example_shape_with_strings_and_lists(sources: Path) -> None:
    document = {
        "allotments": [
            {"src": "./a.bin", "dst": "/bigfile1.txt", "row": 0, "col": 0},
            {"src": ["a.bin", "b.bin"], "dst": ["/m/a", "m/./b"], "row": 1, "col": 0},
        ]
    }
    (sources / "2dfs.json").write_text(json.dumps(document))
    spec = load_spec(sources / "2dfs.json")
    assert [(a.row, a.col) for a in spec.allotments] == [(0, 0), (1, 0)]
    assert spec.allotments[0].files == (FileCopy(sources / "a.bin", "bigfile1.txt"),)
    assert [f.dst for f in spec.allotments[1].files] == ["m/a", "m/b"]


def test_sources_are_relative_to_the_build_file(sources: Path, tmp_path: Path) -> None:
    (sources / "sub" / "2dfs.json").write_text(
        json.dumps({"allotments": [{"src": "../a.bin", "dst": "a", "row": 0, "col": 0}]})
    )
    spec = load_spec(sources / "sub" / "2dfs.json")
    assert spec.allotments[0].files[0].src.resolve() == (sources / "a.bin").resolve()


def test_dump_then_load_gives_the_same_spec(sources: Path) -> None:
    spec = parse_spec(
        {"allotments": [{"src": ["a.bin", "b.bin"], "dst": ["x/a", "x/b"], "row": 2, "col": 1}]},
        sources,
    )
    (sources / "2dfs.json").write_bytes(dump_spec(spec.allotments, sources))
    assert load_spec(sources / "2dfs.json") == spec
    assert json.loads((sources / "2dfs.json").read_text())["allotments"][0]["src"] == [
        "a.bin",
        "b.bin",
    ]


@pytest.mark.parametrize(
    ("allotments", "message"),
    [
        ([], "no allotments"),
        ([{"src": "a.bin", "dst": "a", "row": -1, "col": 0}], "row must be a non-negative"),
        ([{"src": "a.bin", "dst": "a", "row": 0}], "col must be"),
        ([{"src": ["a.bin", "b.bin"], "dst": "a", "row": 0, "col": 0}], "2 src for 1 dst"),
        ([{"src": [], "dst": [], "row": 0, "col": 0}], "non-empty list"),
        ([{"src": "missing", "dst": "a", "row": 0, "col": 0}], "does not exist"),
        ([{"src": "sub", "dst": "a", "row": 0, "col": 0}], "is not a regular file"),
        ([{"src": "a.bin", "dst": "../etc/x", "row": 0, "col": 0}], "inside the image"),
        ([{"src": "a.bin", "dst": "/", "row": 0, "col": 0}], "inside the image"),
        (
            [{"src": ["a.bin", "b.bin"], "dst": ["x", "/x"], "row": 0, "col": 0}],
            "same dst appears twice",
        ),
        (
            [
                {"src": "a.bin", "dst": "a", "row": 1, "col": 2},
                {"src": "b.bin", "dst": "b", "row": 1, "col": 2},
            ],
            "allotment 1 \\(row 1 col 2\\): another allotment",
        ),
    ],
)
def test_bad_build_files_fail_before_anything_is_encoded(
    sources: Path, allotments: list[object], message: str
) -> None:
    with pytest.raises(BuildSpecError, match=message):
        parse_spec({"allotments": allotments}, sources)


def test_unreadable_or_invalid_build_file(tmp_path: Path) -> None:
    with pytest.raises(BuildSpecError, match="cannot read"):
        load_spec(tmp_path / "2dfs.json")
    (tmp_path / "2dfs.json").write_text("{")
    with pytest.raises(BuildSpecError, match="not JSON"):
        load_spec(tmp_path / "2dfs.json")
    with pytest.raises(BuildSpecError, match=r'expected \{"allotments"'):
        parse_spec([], tmp_path)
