"""The snapshot service under load, over gRPC to a real ``lazy2dfs serve``: a burst of
concurrent Prepare/Commit calls, as containerd makes when many images unpack at once, and a
List of a thousand snapshots, as containerd's garbage collector makes."""

import concurrent.futures
import threading
from pathlib import Path

from devstack.snapshotter import LocalSnapshotter
from lazy2dfs.api import mount_pb2, snapshots_pb2_grpc
from lazy2dfs.api import snapshots_pb2 as pb

BURST = 100
LISTED = 1000
CALL_TIMEOUT = 120.0
CHURN_ROUNDS = 200


def top_dir(mount: mount_pb2.Mount) -> Path:
    """The directory of the snapshot's own files: the overlay's upper directory, a view's
    first lower directory, or a bind mount's source."""
    options = dict(o.partition("=")[::2] for o in mount.options)
    if "upperdir" in options:
        return Path(options["upperdir"])
    if "lowerdir" in options:
        return Path(options["lowerdir"].split(":")[0])
    return Path(mount.source)


def listed(stub: snapshots_pb2_grpc.SnapshotsStub) -> list[pb.Info]:
    return [info for batch in stub.List(pb.ListSnapshotsRequest()) for info in batch.info]


def test_a_hundred_concurrent_prepare_commit_calls_all_succeed(daemon: LocalSnapshotter) -> None:
    """Each worker unpacks a layer on a shared base and opens a container on it; all start at
    once. Every call succeeds, and List shows exactly the snapshots made, with their parents,
    kinds and contents."""
    start = threading.Barrier(BURST, timeout=CALL_TIMEOUT)

    def unpack(stub: snapshots_pb2_grpc.SnapshotsStub, n: int) -> None:
        start.wait()
        (mount,) = stub.Prepare(
            pb.PrepareSnapshotRequest(key=f"extract-{n}", parent="base"), timeout=CALL_TIMEOUT
        ).mounts
        (top_dir(mount) / "layer").write_text(str(n))
        stub.Commit(
            pb.CommitSnapshotRequest(name=f"layer-{n}", key=f"extract-{n}"), timeout=CALL_TIMEOUT
        )
        stub.Prepare(
            pb.PrepareSnapshotRequest(key=f"container-{n}", parent=f"layer-{n}"),
            timeout=CALL_TIMEOUT,
        )

    with daemon.channel() as channel:
        stub = daemon.stub(channel)
        stub.Prepare(pb.PrepareSnapshotRequest(key="base-extract"))
        stub.Commit(pb.CommitSnapshotRequest(name="base", key="base-extract"))
        with concurrent.futures.ThreadPoolExecutor(BURST) as pool:
            calls = [pool.submit(unpack, stub, n) for n in range(BURST)]
            for call in calls:
                call.result(timeout=CALL_TIMEOUT)  # raises the RPC error of a failed call

        expected = {("base", "", pb.COMMITTED)}
        for n in range(BURST):
            expected.add((f"layer-{n}", "base", pb.COMMITTED))
            expected.add((f"container-{n}", f"layer-{n}", pb.ACTIVE))
        infos = listed(stub)
        assert len(infos) == len(expected)
        assert {(i.name, i.parent, i.kind) for i in infos} == expected
        for n in range(BURST):
            (view,) = stub.View(pb.ViewSnapshotRequest(key=f"v{n}", parent=f"layer-{n}")).mounts
            assert (top_dir(view) / "layer").read_text() == str(n)


def test_a_thousand_snapshots_are_listed_each_exactly_once(daemon: LocalSnapshotter) -> None:
    """While other snapshots come and go, every one of the thousand that exist for the whole
    List arrives, once."""
    names = [f"sha256:{n:064x}" for n in range(LISTED)]
    stop = threading.Event()

    def make(stub: snapshots_pb2_grpc.SnapshotsStub, name: str) -> None:
        stub.Prepare(pb.PrepareSnapshotRequest(key=f"extract {name}"), timeout=CALL_TIMEOUT)
        stub.Commit(
            pb.CommitSnapshotRequest(name=name, key=f"extract {name}"), timeout=CALL_TIMEOUT
        )

    def churn(stub: snapshots_pb2_grpc.SnapshotsStub) -> int:
        rounds = 0
        while not stop.is_set() and rounds < CHURN_ROUNDS:
            stub.Prepare(pb.PrepareSnapshotRequest(key=f"churn-{rounds}"), timeout=CALL_TIMEOUT)
            stub.Remove(pb.RemoveSnapshotRequest(key=f"churn-{rounds}"), timeout=CALL_TIMEOUT)
            rounds += 1
        return rounds

    with daemon.channel() as channel:
        stub = daemon.stub(channel)
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            for done in [pool.submit(make, stub, name) for name in names]:
                done.result(timeout=CALL_TIMEOUT)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            churning = pool.submit(churn, stub)
            try:
                lists = [listed(stub) for _ in range(3)]
            finally:
                stop.set()
            assert churning.result(timeout=CALL_TIMEOUT) > 0
    for infos in lists:
        stable = [i.name for i in infos if not i.name.startswith("churn-")]
        assert len(stable) == LISTED
        assert sorted(stable) == names
        assert all(i.kind == pb.COMMITTED for i in infos if not i.name.startswith("churn-"))
