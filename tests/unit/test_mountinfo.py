"""How the mount table is read: escaped paths are decoded, and the type is found behind any
number of optional fields."""

from pathlib import Path

from lazy2dfs.mountinfo import MountEntry, read_mounts

MOUNTINFO = (
    "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
    "40 22 0:35 / /tmp/a\\040b\\134c rw - tmpfs tmpfs rw\n"
    "41 40 0:36 / /tmp/a\\040b\\134c/fuse rw shared:7 master:2 - fuse.lazy2dfs lazy2dfs rw\n"
    "42 22 0:37 / /run/c rw - overlay overlay rw,lowerdir=/x/fuse/1:/y,upperdir=/u\n"
)


def test_points_are_decoded_and_types_follow_the_separator(tmp_path: Path) -> None:
    table = tmp_path / "mountinfo"
    table.write_text(MOUNTINFO)
    mounts = read_mounts(table)
    assert [(m.mount_point, m.fs_type) for m in mounts] == [
        ("/", "ext4"),
        ("/tmp/a b\\c", "tmpfs"),
        ("/tmp/a b\\c/fuse", "fuse.lazy2dfs"),
        ("/run/c", "overlay"),
    ]
    assert mounts[3] == MountEntry(
        "/run/c", "overlay", "overlay", ("rw", "lowerdir=/x/fuse/1:/y", "upperdir=/u")
    )
