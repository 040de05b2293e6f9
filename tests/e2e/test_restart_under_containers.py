"""Running containers keep reading lazily pulled weights while the daemon is killed (-9) or
stopped (SIGTERM) and started again: the FUSE keeper holds their requests meanwhile. On
containerd 1.6 and 2.1."""

import hashlib
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from devstack.containerd import RELEASES, Release
from devstack.images import build_image, build_layer
from devstack.model import runtime_tree
from devstack.process import lazy2dfs_argv
from devstack.snapshotter import end_keeper, keeper_pids
from lazy2dfs.estargz import WriterOptions
from tests.support.stack import Stack, private_stack, release_id

CHUNK = 1 << 20
ESTARGZ = WriterOptions(chunk_size=CHUNK, mtime=946684800)
WAIT_SECONDS = 60.0
# Reads in the container go through this many one-part steps after the daemon went away.
READER = """set -e
sha256sum /model/part0 > /out/0
while [ ! -e /out/go ]; do sleep 0.1; done
for i in 1 2 3 4; do sha256sum /model/part$i > /out/$i.tmp; mv /out/$i.tmp /out/$i; done
touch /out/done
"""


@pytest.fixture(scope="module", params=RELEASES, ids=release_id)
def keeper_stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """Background fetch off: what the container reads after the restart is not cached yet,
    so it must travel kernel → keeper → new daemon → registry."""
    config = "[fetch]\nbackground = false\n[fuse]\nrestart_grace_seconds = 60\n"
    release: Release = request.param
    with private_stack(tmp_path_factory.mktemp("keep"), config=config, release=release) as stack:
        yield stack


def wait_for(path: Path) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear in {WAIT_SECONDS}s"
        time.sleep(0.05)


@pytest.mark.parametrize("crash", [True, False], ids=["kill-9", "sigterm"])
def test_a_running_container_reads_on_across_a_daemon_restart(
    keeper_stack: Stack, tmp_path: Path, crash: bool
) -> None:
    stack = keeper_stack
    parts = [os.urandom(3 * CHUNK + i) for i in range(5)]
    model = {f"model/part{i}": data for i, data in enumerate(parts)}
    image = build_image(
        [build_layer(runtime_tree(), estargz=ESTARGZ), build_layer(model, estargz=ESTARGZ)]
    )
    ref = stack.push(f"restart/model:{'kill' if crash else 'term'}", image)
    assert "0 downloaded" in stack.containerd.lazy_pull(ref)
    name = f"reader-{'kill' if crash else 'term'}"
    out = tmp_path / "out"
    out.mkdir()
    bind = f"type=bind,src={out},dst=/out,options=rbind:rw"
    stack.ctr(
        "run", "-d", "--snapshotter", "lazy2dfs", "--mount", bind, ref, name, "sh", "-c", READER
    )
    try:
        wait_for(out / "0")
        snapshots = stack.ctr("snapshots", "--snapshotter", "lazy2dfs", "ls")
        if crash:
            stack.snapshotter.kill()
        else:
            assert stack.snapshotter.stop_daemon() == 0
        assert keeper_pids(stack.snapshotter.root), "the keeper went with the daemon"
        (out / "go").touch()
        time.sleep(1.5)
        assert not (out / "1").exists(), "a read was served with no daemon running"

        stack.restart_snapshotter(crash=False)
        wait_for(out / "done")
        for i, data in enumerate(parts):
            assert (out / str(i)).read_text().split()[0] == hashlib.sha256(data).hexdigest()
        assert stack.ctr("snapshots", "--snapshotter", "lazy2dfs", "ls") == snapshots
        # The mount is still where new containers find it, not only under the old one.
        again = stack.run(ref, name + "-new", "sha256sum /model/part0")
        assert again.split()[0] == hashlib.sha256(parts[0]).hexdigest()
    finally:
        stack.containerd.ctr("task", "rm", "-f", name, check=False)
        stack.containerd.ctr("containers", "rm", name, check=False)


def fuse_mount_id(mountpoint: Path) -> int:
    """The mount's ID in /proc/self/mountinfo: a new mount at the same place gets a new one."""
    ids = [
        int(line.split()[0])
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if line.split()[4] == str(mountpoint)
    ]
    assert len(ids) == 1, ids
    return ids[0]


@contextmanager
def external_keeper(root: Path, config: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``lazy2dfs keeper`` for ``root``, as its own container would run it: a process of its
    own, in a session of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAZY2DFS_")}
    keeper = subprocess.Popen(
        [*lazy2dfs_argv(), "keeper", "--root", str(root), "--config", str(config)],
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + WAIT_SECONDS
        while not (root / "fuse-keeper.sock").exists():
            assert keeper.poll() is None, f"lazy2dfs keeper exited with {keeper.returncode}"
            assert time.monotonic() < deadline, "lazy2dfs keeper did not listen"
            time.sleep(0.05)
        yield keeper
    finally:
        end_keeper(root)
        keeper.wait(timeout=WAIT_SECONDS)


def test_with_an_external_keeper_a_killed_daemon_leaves_the_mount_to_running_containers(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """As in the DaemonSet, where kubelet restarts the daemon's container (liveness) without
    touching the keeper's: the daemon is killed, the keeper and its mount stay, and a new
    daemon serves the container's reads on the same mount."""
    work = tmp_path_factory.mktemp("ext")
    settings = (
        '[fetch]\nbackground = false\n[fuse]\nrestart_grace_seconds = 60\nkeeper = "external"\n'
    )
    (work / "keeper.toml").write_text(settings)
    root = work / "s" / "root"  # the root private_stack gives its daemon
    with (
        external_keeper(root, work / "keeper.toml") as keeper,
        private_stack(work, config=settings) as stack,
    ):
        assert stack.snapshotter.root == root
        mount_id = fuse_mount_id(root / "fuse")
        parts = [os.urandom(3 * CHUNK + i) for i in range(5)]
        model = {f"model/part{i}": data for i, data in enumerate(parts)}
        image = build_image(
            [build_layer(runtime_tree(), estargz=ESTARGZ), build_layer(model, estargz=ESTARGZ)]
        )
        ref = stack.push("restart/model:external", image)
        assert "0 downloaded" in stack.containerd.lazy_pull(ref)
        out = tmp_path / "out"
        out.mkdir()
        bind = f"type=bind,src={out},dst=/out,options=rbind:rw"
        stack.ctr(
            "run",
            "-d",
            "--snapshotter",
            "lazy2dfs",
            "--mount",
            bind,
            ref,
            "ext",
            "sh",
            "-c",
            READER,
        )
        try:
            wait_for(out / "0")
            stack.snapshotter.kill()
            (out / "go").touch()
            time.sleep(1.5)
            assert not (out / "1").exists(), "a read was served with no daemon running"
            assert keeper.poll() is None and fuse_mount_id(root / "fuse") == mount_id

            stack.restart_snapshotter(crash=False)
            wait_for(out / "done")
            for i, data in enumerate(parts):
                assert (out / str(i)).read_text().split()[0] == hashlib.sha256(data).hexdigest()
            assert fuse_mount_id(root / "fuse") == mount_id
            # A stopped daemon leaves the mount to the keeper, containers or not.
            stack.containerd.ctr("task", "rm", "-f", "ext", check=False)
            stack.containerd.ctr("containers", "rm", "ext", check=False)
            assert stack.snapshotter.stop_daemon() == 0
            assert keeper.poll() is None and fuse_mount_id(root / "fuse") == mount_id
            stack.snapshotter.start()
        finally:
            stack.containerd.ctr("task", "rm", "-f", "ext", check=False)
            stack.containerd.ctr("containers", "rm", "ext", check=False)
