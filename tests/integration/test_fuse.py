"""The FUSE filesystem through the kernel, and overlayfs on top of it, as containers see it."""

import errno
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.mounts import mounts_under
from lazy2dfs.fuse.session import FuseSession
from lazy2dfs.fuse.tree import Entry, LayerTree
from tests.support.fuse import mounted_session
from tests.support.memory import MemoryReader


@pytest.fixture(scope="module")
def mount(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FuseSession, Path]]:
    with mounted_session(tmp_path_factory.mktemp("fuse")) as session:
        path = session.mountpoint
        yield session, path
    assert not mounts_under(path)


def add(session: FuseSession, name: str, slot: int, entries: list[Entry]) -> None:
    session.call_sync(
        session.filesystem.add_layer, name, LayerTree(slot, entries), MemoryReader(FILES)
    )


WEIGHTS = os.urandom(3 * 1024 * 1024 + 17)

FILES: dict[str, bytes] = {
    "models/resnet/weights.bin": WEIGHTS,
    "deep/implied/file": b"hi",
    ".prefetch.landmark": b"\x0f",
    "keep": b"keep",
    "gone": b"gone",
    "opaque/old": b"old",
    "opaque/new": b"new",
}


def test_metadata_and_bytes_come_through(mount: tuple[FuseSession, Path]) -> None:
    session, path = mount
    add(
        session,
        "layer-a",
        1,
        [
            Entry("./", "dir", mode=0o755),
            Entry("./models/resnet/", "dir", mode=0o750, uid=1000, gid=1000),
            Entry(
                "models/resnet/weights.bin",
                "reg",
                mode=0o640,
                uid=1000,
                gid=100,
                size=len(WEIGHTS),
                mtime_ns=946684800 * 10**9,
                key="models/resnet/weights.bin",
                xattrs={b"user.origin": b"2dfs"},
            ),
            Entry("models/resnet/latest", "symlink", link_name="weights.bin"),
            Entry("models/resnet/copy", "hardlink", link_name="models/resnet/weights.bin"),
            Entry("deep/implied/file", "reg", size=2, key="deep/implied/file"),
            Entry("dev/null", "char", mode=0o666, dev_major=1, dev_minor=3),
            Entry(".prefetch.landmark", "reg", size=1, key=".prefetch.landmark"),
        ],
    )
    root = path / "layer-a"
    weights = root / "models/resnet/weights.bin"
    st = os.stat(weights)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 1000, 100)
    assert st.st_size == len(WEIGHTS) and st.st_mtime == 946684800 and st.st_nlink == 2
    assert weights.read_bytes() == WEIGHTS
    assert os.stat(root / "models/resnet/copy").st_ino == st.st_ino
    assert os.readlink(root / "models/resnet/latest") == "weights.bin"
    assert os.getxattr(weights, "user.origin") == b"2dfs"
    assert stat.S_IMODE(os.stat(root / "models/resnet").st_mode) == 0o750
    assert stat.S_IMODE(os.stat(root / "deep/implied").st_mode) == 0o755
    dev = os.stat(root / "dev/null")
    assert stat.S_ISCHR(dev.st_mode) and (os.major(dev.st_rdev), os.minor(dev.st_rdev)) == (1, 3)
    assert sorted(os.listdir(root)) == ["deep", "dev", "models"]
    with pytest.raises(OSError) as err:
        os.open(weights, os.O_RDWR)
    assert err.value.errno == errno.EROFS


def test_overlay_sees_whiteouts_and_opaque_dirs(
    mount: tuple[FuseSession, Path], tmp_path: Path
) -> None:
    session, path = mount
    add(
        session,
        "lower",
        2,
        [
            Entry("keep", "reg", size=4, key="keep"),
            Entry("gone", "reg", size=4, key="gone"),
            Entry("opaque/old", "reg", size=3, key="opaque/old"),
        ],
    )
    add(
        session,
        "upper",
        3,
        [
            Entry(".wh.gone", "reg"),
            Entry("opaque/.wh..wh..opq", "reg"),
            Entry("opaque/new", "reg", size=3, key="opaque/new"),
        ],
    )
    merged = tmp_path / "merged"
    merged.mkdir()
    lowerdir = f"{path / 'upper'}:{path / 'lower'}"
    subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={lowerdir}", str(merged)],
        check=True,
    )
    try:
        assert sorted(os.listdir(merged)) == ["keep", "opaque"]
        assert os.listdir(merged / "opaque") == ["new"]
        assert (merged / "keep").read_bytes() == b"keep"
    finally:
        subprocess.run(["umount", str(merged)], check=True)


def test_unsafe_names_are_refused() -> None:
    from lazy2dfs.errors import IntegrityError

    for name in ("../etc/passwd", "/abs", "a/../../b"):
        with pytest.raises(IntegrityError):
            LayerTree(9, [Entry(name, "reg")])
    with pytest.raises(IntegrityError, match="missing"):
        LayerTree(9, [Entry("link", "hardlink", link_name="nowhere")])
