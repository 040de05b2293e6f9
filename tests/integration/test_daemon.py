"""The daemon as containerd meets it: a process behind a unix socket, over gRPC."""

import concurrent.futures
import os
import stat
import subprocess
import time
from pathlib import Path

import grpc
import pytest

from devstack.process import lazy2dfs_argv
from devstack.snapshotter import LocalSnapshotter
from lazy2dfs.api import snapshots_pb2 as pb

REF_LABEL = "containerd.io/snapshot.ref"


def code_of(call: "object") -> grpc.StatusCode:
    assert isinstance(call, grpc.RpcError)
    code: grpc.StatusCode = call.code()
    return code


def test_socket_is_0660_root_and_second_daemon_refuses(
    daemon: LocalSnapshotter, tmp_path: Path
) -> None:
    st = os.stat(daemon.address)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660
    assert (st.st_uid, st.st_gid) == (0, 0)
    other = tmp_path / "other.sock"
    second = subprocess.run(
        [*lazy2dfs_argv(), "serve", "--root", str(daemon.root), "--address", str(other)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert second.returncode == 1
    assert "another lazy2dfs daemon" in second.stderr and "--root" in second.stderr
    assert not (tmp_path / "other.sock").exists()
    with daemon.channel() as channel:
        daemon.stub(channel).Prepare(pb.PrepareSnapshotRequest(key="still-serving"))


def test_sigterm_exits_zero_and_removes_the_socket(daemon: LocalSnapshotter) -> None:
    assert daemon.stop() == 0
    assert not daemon.address.exists()


def test_error_codes_on_the_wire(daemon: LocalSnapshotter) -> None:
    with daemon.channel() as channel:
        stub = daemon.stub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.Stat(pb.StatSnapshotRequest(key="missing"))
        assert code_of(err.value) == grpc.StatusCode.NOT_FOUND
        stub.Prepare(pb.PrepareSnapshotRequest(key="a"))
        with pytest.raises(grpc.RpcError) as err:
            stub.Prepare(pb.PrepareSnapshotRequest(key="a"))
        assert code_of(err.value) == grpc.StatusCode.ALREADY_EXISTS
        stub.Commit(pb.CommitSnapshotRequest(name="base", key="a"))
        stub.Prepare(pb.PrepareSnapshotRequest(key="child", parent="base"))
        with pytest.raises(grpc.RpcError) as err:
            stub.Remove(pb.RemoveSnapshotRequest(key="base"))
        assert code_of(err.value) == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(grpc.RpcError) as err:
            stub.Mounts(pb.MountsRequest(key="base"))
        assert code_of(err.value) == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(grpc.RpcError) as err:
            list(stub.List(pb.ListSnapshotsRequest(filters=["name=="])))
        assert code_of(err.value) == grpc.StatusCode.INVALID_ARGUMENT


def test_list_streams_in_batches_and_filters(daemon: LocalSnapshotter) -> None:
    with daemon.channel() as channel:
        stub = daemon.stub(channel)
        for n in range(250):
            stub.Prepare(pb.PrepareSnapshotRequest(key=f"k8s.io/1/extract-{n} sha256:{n:064x}"))
        stub.Commit(
            pb.CommitSnapshotRequest(
                name="sha256:chain",
                key="k8s.io/1/extract-0 " + "sha256:" + "0" * 64,
                labels={REF_LABEL: "sha256:chain"},
            )
        )
        batches = list(stub.List(pb.ListSnapshotsRequest()))
        assert [len(b.info) for b in batches] == [100, 100, 50]
        wanted = f'labels."{REF_LABEL}"==sha256:chain,parent==""'
        (hit,) = [i for b in stub.List(pb.ListSnapshotsRequest(filters=[wanted])) for i in b.info]
        assert hit.name == "sha256:chain" and hit.kind == pb.COMMITTED
        assert hit.created_at.seconds > 1_700_000_000


def test_update_with_go_zero_time_and_label_paths(daemon: LocalSnapshotter) -> None:
    with daemon.channel() as channel:
        stub = daemon.stub(channel)
        stub.Prepare(pb.PrepareSnapshotRequest(key="a", labels={"x": "1"}))
        info = pb.Info(name="a", labels={"containerd.io/gc.root": "now"})
        info.created_at.seconds = -62135596800  # Go's time.Time{}
        request = pb.UpdateSnapshotRequest(info=info)
        request.update_mask.paths.extend(["labels.containerd.io/gc.root", "labels.x"])
        updated = stub.Update(request).info
        assert dict(updated.labels) == {"containerd.io/gc.root": "now"}
        assert updated.updated_at.seconds > 1_700_000_000


def test_restart_keeps_committed_snapshots(daemon: LocalSnapshotter) -> None:
    with daemon.channel() as channel:
        stub = daemon.stub(channel)
        (mount,) = stub.Prepare(pb.PrepareSnapshotRequest(key="a")).mounts
        Path(mount.source, "weights.bin").write_bytes(b"w" * 1000)
        stub.Commit(pb.CommitSnapshotRequest(name="layer", key="a"))
    daemon.restart()
    with daemon.channel() as channel:
        stub = daemon.stub(channel)
        assert stub.Stat(pb.StatSnapshotRequest(key="layer")).info.kind == pb.COMMITTED
        (view,) = stub.View(pb.ViewSnapshotRequest(key="v", parent="layer")).mounts
        assert Path(view.source, "weights.bin").read_bytes() == b"w" * 1000


def test_kill_during_a_burst_leaves_a_consistent_store(daemon: LocalSnapshotter) -> None:
    def prepare_commit(channel: grpc.Channel, n: int) -> None:
        stub = daemon.stub(channel)
        try:
            (mount,) = stub.Prepare(pb.PrepareSnapshotRequest(key=f"extract-{n}")).mounts
            Path(mount.source, "f").write_bytes(b"x" * n)
            stub.Commit(pb.CommitSnapshotRequest(name=f"layer-{n}", key=f"extract-{n}"))
        except (grpc.RpcError, OSError):
            pass  # the daemon died under this call: the point of the test

    with daemon.channel() as channel, concurrent.futures.ThreadPoolExecutor(50) as pool:
        burst = [pool.submit(prepare_commit, channel, n) for n in range(50)]
        time.sleep(0.05)
        daemon.kill()
        concurrent.futures.wait(burst, timeout=60)
    daemon.start()
    snapshots_dir = daemon.root / "snapshots"
    with daemon.channel() as channel:
        stub = daemon.stub(channel)
        infos = [i for b in stub.List(pb.ListSnapshotsRequest()) for i in b.info]
        ids = sorted(os.listdir(snapshots_dir))
        # Every snapshot has its directory, and startup removed every directory without one.
        assert len(ids) == len(infos)
        for info in infos:
            if info.kind == pb.ACTIVE:
                assert stub.Mounts(pb.MountsRequest(key=info.name)).mounts
            else:
                n = int(info.name.removeprefix("layer-"))
                (view,) = stub.View(pb.ViewSnapshotRequest(key=f"v{n}", parent=info.name)).mounts
                assert Path(view.source, "f").read_bytes() == b"x" * n
        stub.Prepare(pb.PrepareSnapshotRequest(key="after-restart"))
