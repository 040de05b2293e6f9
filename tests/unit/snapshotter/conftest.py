from collections.abc import Iterator
from pathlib import Path

import pytest

from lazy2dfs.snapshotter.mounts import OverlayFeatures
from lazy2dfs.snapshotter.overlay import OverlaySnapshotter
from lazy2dfs.snapshotter.store import Store


@pytest.fixture
def snapshotter(tmp_path: Path) -> Iterator[OverlaySnapshotter]:
    store = Store(tmp_path / "metadata.db")
    yield OverlaySnapshotter(tmp_path, store, OverlayFeatures(index_off=True, userxattr=False))
    store.close()
