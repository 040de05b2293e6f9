from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.snapshotter import LocalSnapshotter


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[LocalSnapshotter]:
    with LocalSnapshotter(tmp_path / "d") as running:
        yield running
