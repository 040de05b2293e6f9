"""The daemon's FUSE mount in the test process, without a daemon."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from devstack.snapshotter import end_keeper
from lazy2dfs.fuse.filesystem import LayerFilesystem
from lazy2dfs.fuse.session import FuseSession, Keeper


@contextmanager
def mounted_session(root: Path) -> Iterator[FuseSession]:
    """A FUSE session mounted at ``root``'s keeper, as the daemon has it; on exit the session
    stops and the keeper (which outlives sessions on purpose) ends, unmounting."""
    session = FuseSession(LayerFilesystem(), Keeper(root, grace_seconds=10))
    session.start()
    try:
        session.mount()
        yield session
    finally:
        session.stop()
        end_keeper(root)
