import os
import stat
import threading
from pathlib import Path

import pytest

from lazy2dfs.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)
from lazy2dfs.snapshotter.mounts import Mount, OverlayFeatures
from lazy2dfs.snapshotter.overlay import OverlaySnapshotter
from lazy2dfs.snapshotter.snapshot import Info, Kind
from lazy2dfs.snapshotter.store import Store

UNPACK_KEY = "k8s.io/12/extract-123 sha256:abc"


def upper_of(mounts: list[Mount]) -> Path:
    (mount,) = mounts
    if mount.type == "bind":
        return Path(mount.source)
    (upper,) = [o for o in mount.options if o.startswith("upperdir=")]
    return Path(upper.removeprefix("upperdir="))


def layer(s: OverlaySnapshotter, name: str, parent: str = "", files: int = 1) -> Path:
    key = f"k8s.io/1/extract-{name} {name}"
    fs = upper_of(s.prepare(key, parent, {}))
    for i in range(files):
        (fs / f"{name}-{i}").write_text(name)
    s.commit(name, key, {})
    return fs


def test_first_snapshot_is_a_writable_bind_mount_with_a_0755_root(
    snapshotter: OverlaySnapshotter,
) -> None:
    (mount,) = snapshotter.prepare(UNPACK_KEY, "", {})
    assert mount.type == "bind" and mount.options == ("rw", "rbind")
    assert stat.S_IMODE(os.stat(mount.source).st_mode) == 0o755


def test_mount_shapes_match_containerd_overlayfs(snapshotter: OverlaySnapshotter) -> None:
    base = layer(snapshotter, "base")
    mid = layer(snapshotter, "mid", parent="base")

    (one_view,) = snapshotter.view("v1", "base", {})
    assert one_view == Mount("bind", str(base), ("ro", "rbind"))

    (two_view,) = snapshotter.view("v2", "mid", {})
    assert two_view.type == "overlay"
    assert two_view.options == ("index=off", f"lowerdir={mid}:{base}")

    (active,) = snapshotter.prepare("c", "mid", {})
    opts = active.options
    assert opts[0] == "index=off"
    assert opts[1].startswith("workdir=") and opts[2].startswith("upperdir=")
    assert opts[3] == f"lowerdir={mid}:{base}"
    assert snapshotter.mounts("c") == [active]


def test_commit_replaces_labels_and_frees_the_key(snapshotter: OverlaySnapshotter) -> None:
    snapshotter.prepare(UNPACK_KEY, "", {"containerd.io/snapshot/a": "1"})
    snapshotter.commit("sha256:layer", UNPACK_KEY, {"containerd.io/snapshot/b": "2"})
    info = snapshotter.stat("sha256:layer")
    assert info.kind == Kind.COMMITTED and info.labels == {"containerd.io/snapshot/b": "2"}
    with pytest.raises(NotFoundError):
        snapshotter.stat(UNPACK_KEY)
    with pytest.raises(FailedPreconditionError):
        snapshotter.mounts("sha256:layer")


def test_state_errors(snapshotter: OverlaySnapshotter) -> None:
    layer(snapshotter, "base")
    snapshotter.prepare("active", "base", {})
    with pytest.raises(AlreadyExistsError):
        snapshotter.prepare("active", "", {})
    with pytest.raises(NotFoundError):
        snapshotter.prepare("x", "missing", {})
    with pytest.raises(InvalidArgumentError, match="not a committed"):
        snapshotter.prepare("x", "active", {})
    with pytest.raises(AlreadyExistsError):
        snapshotter.commit("base", "active", {})
    snapshotter.view("view", "base", {})
    with pytest.raises(FailedPreconditionError):
        snapshotter.commit("n", "view", {})
    with pytest.raises(FailedPreconditionError, match="child"):
        snapshotter.remove("base")
    with pytest.raises(InvalidArgumentError, match="too long"):
        snapshotter.prepare("y", "", {"k": "v" * 4096})
    # Nothing half-made is left behind by the refused calls.
    assert {i.name for i in snapshotter.list([])} == {"base", "active", "view"}


def test_remove_deletes_the_directory(snapshotter: OverlaySnapshotter) -> None:
    fs = layer(snapshotter, "base")
    snapshotter.remove("base")
    assert not fs.parent.exists()
    with pytest.raises(NotFoundError):
        snapshotter.remove("base")


def test_update_by_field_paths(snapshotter: OverlaySnapshotter) -> None:
    snapshotter.prepare("a", "", {"keep": "1", "gc": "x"})
    info = Info("a", "", Kind.UNKNOWN, 0, 0, {"new": "2", "keep": "changed"})
    updated = snapshotter.update(info, ["labels.new", "labels.gc"])
    assert updated.labels == {"keep": "1", "new": "2"}
    assert snapshotter.update(info, ["labels"]).labels == {"new": "2", "keep": "changed"}
    assert snapshotter.update(Info("a", "", Kind.UNKNOWN, 0, 0, {"z": "1"}), []).labels == {
        "z": "1"
    }
    with pytest.raises(InvalidArgumentError, match="only labels"):
        snapshotter.update(info, ["parent"])
    with pytest.raises(NotFoundError):
        snapshotter.update(Info("nope", "", Kind.UNKNOWN, 0, 0, {}), [])


def test_usage_counts_own_files_only_and_is_fixed_at_commit(
    snapshotter: OverlaySnapshotter,
) -> None:
    fs = upper_of(snapshotter.prepare("a", "", {}))
    (fs / "blob").write_bytes(os.urandom(1 << 20))
    os.link(fs / "blob", fs / "hardlink")
    active = snapshotter.usage("a")
    assert active.inodes == 2 and active.size >= 1 << 20
    snapshotter.commit("layer", "a", {})
    fs2 = upper_of(snapshotter.prepare("b", "layer", {}))
    (fs2 / "small").write_bytes(b"x")
    assert snapshotter.usage("layer") == active
    child = snapshotter.usage("b")
    assert child.inodes == 2 and child.size < 1 << 20


def test_new_upper_takes_the_owner_of_the_parent_root(snapshotter: OverlaySnapshotter) -> None:
    fs = upper_of(snapshotter.prepare("a", "", {}))
    os.chown(fs, 1234, 5678)
    snapshotter.commit("layer", "a", {})
    st = os.stat(upper_of(snapshotter.prepare("b", "layer", {})))
    assert (st.st_uid, st.st_gid) == (1234, 5678)


def test_cleanup_removes_only_unowned_directories(
    tmp_path: Path, snapshotter: OverlaySnapshotter
) -> None:
    fs = layer(snapshotter, "base")
    orphan = tmp_path / "snapshots" / "999"
    (orphan / "fs").mkdir(parents=True)
    snapshotter.cleanup()
    assert not orphan.exists()
    assert (fs / "base-0").read_text() == "base"


def test_startup_recovers_from_orphans(tmp_path: Path) -> None:
    store = Store(tmp_path / "metadata.db")
    (tmp_path / "snapshots" / "new-crashed" / "fs").mkdir(parents=True)
    s = OverlaySnapshotter(tmp_path, store, OverlayFeatures(False, False))
    assert os.listdir(tmp_path / "snapshots") == []
    assert upper_of(s.prepare("a", "", {})).is_dir()
    store.close()


def test_concurrent_prepare_and_commit(snapshotter: OverlaySnapshotter) -> None:
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            layer(snapshotter, f"layer-{n}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(snapshotter.list(["kind==committed"])) == 50


def test_list_applies_filters(snapshotter: OverlaySnapshotter) -> None:
    layer(snapshotter, "base")
    snapshotter.prepare("a", "base", {"containerd.io/snapshot.ref": "r"})
    assert [i.name for i in snapshotter.list(['labels."containerd.io/snapshot.ref"==r'])] == ["a"]
    assert [i.name for i in snapshotter.list(["parent==base", "name==base"])] == ["base", "a"]
