from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.registry import LocalRegistry
from devstack.snapshotter import LocalSnapshotter


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[LocalSnapshotter]:
    with LocalSnapshotter(tmp_path / "d") as running:
        yield running


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    """A registry per test module: tests push under names of their own."""
    with LocalRegistry(tmp_path_factory.mktemp("registry")) as running:
        yield running


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path
