"""How tests and benchmarks read /proc/self/mountinfo: escaped paths are decoded, and the type
is found behind any number of optional fields."""

from devstack.mounts import Mount, parse_mountinfo

MOUNTINFO = (
    "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
    "40 22 0:35 / /tmp/a\\040b\\134c rw - tmpfs tmpfs rw\n"
    "41 40 0:36 / /tmp/a\\040b\\134c/fuse rw shared:7 master:2 - fuse.lazy2dfs lazy2dfs rw\n"
)


def test_points_are_decoded_and_types_follow_the_separator() -> None:
    assert parse_mountinfo(MOUNTINFO) == [
        Mount("/", "ext4"),
        Mount("/tmp/a b\\c", "tmpfs"),
        Mount("/tmp/a b\\c/fuse", "fuse.lazy2dfs"),
    ]
