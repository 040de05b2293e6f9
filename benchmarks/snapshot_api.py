"""Latency of Prepare, Mounts and Commit through containerd: lazy2dfs against overlayfs.

Each simulated pull unpacks a chain of layers the way containerd's unpacker drives a
snapshotter (Prepare ``extract-… <chainID>`` on the parent, Mounts, Commit ``<chainID>``). Pulls
run 1 and 20 at a time against the same private containerd, both snapshotters in the same run,
alternating, so the machine's noise falls on both alike.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import grpc

from benchmarks import report
from devstack.containerd import LocalContainerd
from devstack.snapshotter import LocalSnapshotter
from lazy2dfs.api import snapshots_pb2 as pb
from lazy2dfs.api import snapshots_pb2_grpc

SNAPSHOTTERS = ("overlayfs", "lazy2dfs")
CONCURRENCY = (1, 20)
LAYERS_PER_PULL = 5
PULLS_PER_ROUND = 20
ROUNDS = 5
NAMESPACE = (("containerd-namespace", "bench"),)
OPS = ("Prepare", "Mounts", "Commit")
# Without a lease, containerd's garbage collector may remove a snapshot between our calls; a
# gc.root label keeps it, as a lease does for a real pull.
KEEP = {"containerd.io/gc.root": "benchmark"}

Samples = dict[str, list[float]]


def _pull(stub: Any, snapshotter: str, samples: Samples) -> list[str]:
    parent = ""
    chain: list[str] = []
    for _ in range(LAYERS_PER_PULL):
        name = f"sha256:{uuid.uuid4().hex}{uuid.uuid4().hex}"
        key = f"bench/1/extract-{uuid.uuid4().hex[:12]} {name}"
        start = time.perf_counter()
        stub.Prepare(
            pb.PrepareSnapshotRequest(snapshotter=snapshotter, key=key, parent=parent, labels=KEEP),
            metadata=NAMESPACE,
        )
        samples["Prepare"].append(time.perf_counter() - start)
        start = time.perf_counter()
        stub.Mounts(pb.MountsRequest(snapshotter=snapshotter, key=key), metadata=NAMESPACE)
        samples["Mounts"].append(time.perf_counter() - start)
        start = time.perf_counter()
        stub.Commit(
            pb.CommitSnapshotRequest(snapshotter=snapshotter, name=name, key=key, labels=KEEP),
            metadata=NAMESPACE,
        )
        samples["Commit"].append(time.perf_counter() - start)
        chain.append(name)
        parent = name
    return chain


def _round(stub: Any, snapshotter: str, concurrency: int, samples: Samples) -> None:
    def worker() -> list[list[str]]:
        return [_pull(stub, snapshotter, samples) for _ in range(PULLS_PER_ROUND // concurrency)]

    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        chains = [c for f in [pool.submit(worker) for _ in range(concurrency)] for c in f.result()]
    for chain in chains:
        for name in reversed(chain):
            stub.Remove(
                pb.RemoveSnapshotRequest(snapshotter=snapshotter, key=name), metadata=NAMESPACE
            )


def run() -> Path:
    results: dict[str, Samples] = {}
    with tempfile.TemporaryDirectory(prefix="l2d-bench-") as tmp:
        work = Path(tmp)
        with (
            LocalSnapshotter(work / "snapshotter", log_level="warning") as daemon,
            LocalContainerd(work / "containerd", daemon.address) as containerd,
            grpc.insecure_channel(f"unix:{containerd.address}") as channel,
        ):
            stub = snapshots_pb2_grpc.SnapshotsStub(channel)
            for _, concurrency, snapshotter in itertools.product(
                range(ROUNDS), CONCURRENCY, SNAPSHOTTERS
            ):
                samples = results.setdefault(f"{snapshotter}@{concurrency}", {op: [] for op in OPS})
                _round(stub, snapshotter, concurrency, samples)

    rows: list[list[Any]] = []
    plot: dict[str, dict[str, float]] = {}
    for concurrency, op in itertools.product(CONCURRENCY, OPS):
        base = results[f"overlayfs@{concurrency}"][op]
        ours = results[f"lazy2dfs@{concurrency}"][op]
        p50 = (report.percentile(base, 50) * 1e3, report.percentile(ours, 50) * 1e3)
        p99 = (report.percentile(base, 99) * 1e3, report.percentile(ours, 99) * 1e3)
        rows.append([op, concurrency, len(ours), *p50, *p99, p99[1] / p99[0]])
        plot[f"{op} x{concurrency} p99"] = {"overlayfs": p99[0], "lazy2dfs": p99[1]}
    return report.write(
        "snapshot_api",
        "Snapshot API latency through containerd 1.6 (ms)",
        [
            "call",
            "concurrent pulls",
            "calls",
            "overlayfs p50",
            "lazy2dfs p50",
            "overlayfs p99",
            "lazy2dfs p99",
            "p99 ratio",
        ],
        rows,
        {k: {op: v for op, v in s.items()} for k, s in results.items()},
        plot,
        "milliseconds",
    )
