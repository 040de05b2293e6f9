"""The documentation's links lead somewhere, and the benchmark index lists every result."""

import re
from pathlib import Path

import pytest

from devstack.containerd import RELEASES

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
PAGES = [*sorted(DOCS.glob("*.md")), REPO / "deploy" / "kubernetes" / "README.md"]
# [text](target) with a relative target; web links and in-page anchors are not checked.
_LINK = re.compile(r"\]\((?!https?:|#)([^)#\s]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page: Path) -> None:
    targets = _LINK.findall(page.read_text())
    missing = [t for t in targets if not (page.parent / t).exists()]
    assert not missing, f"{page.relative_to(REPO)} links to missing files: {missing}"


def test_link_pattern_sees_links() -> None:
    assert _LINK.findall("see [a](b.md#x), [c](https://e), [d](#f) and [g](../h/i.toml)") == [
        "b.md",
        "../h/i.toml",
    ]


def test_benchmark_index_links_every_result() -> None:
    linked = set(_LINK.findall((DOCS / "benchmarks.md").read_text()))
    results = {f"benchmarks/{p.name}" for p in (DOCS / "benchmarks").glob("*.md")}
    assert results, "no docs/benchmarks/*.md: run 'make bench'"
    assert results <= linked, f"add to docs/benchmarks.md: {sorted(results - linked)}"


def test_the_kubernetes_version_table_names_the_containerds_the_tests_run() -> None:
    """docs/kubernetes.md says which containerd did what in the tests: its column headers
    name the exact versions of the binaries the end-to-end tests start, and their files."""
    [header] = [
        line
        for line in (DOCS / "kubernetes.md").read_text().splitlines()
        if line.startswith("| |") and "containerd" in line
    ]
    columns = [c.strip() for c in header.strip("|").split("|")][1:]
    assert len(columns) == len(RELEASES)
    for column, release in zip(columns, RELEASES, strict=True):
        assert column.startswith(f"containerd {release.version()} ("), column
        assert f"({_relative(release.shipped_config)})" in column, column


def _relative(path: Path) -> str:
    return "../" + str(path.relative_to(REPO))
