"""A complete layer written as a real directory, exactly as the FUSE mount shows it."""

import os
import stat
from pathlib import Path

from lazy2dfs.fuse.tree import Entry, LayerTree
from lazy2dfs.layers.localtree import write_tree


def test_the_local_tree_is_what_overlayfs_expects_of_a_lower_directory(tmp_path: Path) -> None:
    weights = tmp_path / "backing-weights"
    weights.write_bytes(b"w" * 100)
    tree = LayerTree(
        1,
        [
            Entry("", "dir", mode=0o755),
            Entry("models", "dir", mode=0o750, uid=1000, gid=100, mtime_ns=10**18),
            Entry(
                "models/w.bin",
                "reg",
                mode=0o4755,
                uid=1000,
                gid=100,
                size=100,
                key="w",
                mtime_ns=946684800 * 10**9,
                xattrs={b"user.origin": b"2dfs"},
            ),
            Entry("models/w-copy", "hardlink", link_name="models/w.bin"),
            Entry("models/empty", "reg", mode=0o600, size=0, key="e"),
            Entry("models/latest", "symlink", link_name="w.bin"),
            Entry("dev/null", "char", mode=0o666, dev_major=1, dev_minor=3),
            Entry("etc/.wh.passwd", "reg", size=0),
            Entry("opt/.wh..wh..opq", "reg", size=0),
            Entry(".prefetch.landmark", "reg", size=1, key="l"),
        ],
    )
    target = tmp_path / "tree"
    write_tree(tree, lambda key: weights if key == "w" else None, target)
    w = os.stat(target / "models/w.bin")
    assert (stat.S_IMODE(w.st_mode), w.st_uid, w.st_gid) == (0o4755, 1000, 100)
    assert w.st_mtime == 946684800 and w.st_nlink == 3  # two names and the backing file
    assert w.st_ino == os.stat(weights).st_ino  # linked, not copied
    assert (target / "models/w-copy").read_bytes() == b"w" * 100
    assert os.getxattr(target / "models/w.bin", "user.origin") == b"2dfs"
    assert os.readlink(target / "models/latest") == "w.bin"
    assert (target / "models/empty").read_bytes() == b""
    models = os.stat(target / "models")
    assert (stat.S_IMODE(models.st_mode), models.st_uid, models.st_mtime_ns) == (
        0o750,
        1000,
        10**18,
    )
    null = os.stat(target / "dev/null")
    assert stat.S_ISCHR(null.st_mode) and null.st_rdev == os.makedev(1, 3)
    whiteout = os.stat(target / "etc/passwd")
    assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == 0
    assert os.getxattr(target / "opt", "trusted.overlay.opaque") == b"y"
    assert not (target / ".prefetch.landmark").exists()
    assert not list(tmp_path.glob(".tree*"))  # written under another name, then renamed
